"""Built-in domain recipes, one module per domain, found by name."""

from __future__ import annotations

from forgetlab.data.recipes import books, code, dialogue, legal, math, medical, mmlu
from forgetlab.data.recipes.base import Recipe

RECIPES: dict[str, Recipe] = {
    m.RECIPE.name: m.RECIPE for m in (code, math, medical, legal, dialogue, books, mmlu)
}
BUILTIN_DOMAINS: tuple[str, ...] = tuple(RECIPES)
"""All built-in recipes, the five stream domains first, then books, then the mmlu probe."""

__all__ = ["BUILTIN_DOMAINS", "RECIPES", "Recipe"]
