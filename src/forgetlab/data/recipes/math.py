"""math: the CHAMP competition-math set (problems, hints, human and model-written solutions)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("champ-dataset", "1.0.0", "champ_dataset-1.0.0-py3-none-any.whl",
            "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201"),
)
FILE = "champ_dataset/dataset_files/v0.json"


def problem_document(problem: dict, hints: dict) -> str:
    """Problem, its hints, the human step-by-step solution and the answer."""
    lines = [f"Problem ({problem['category']}): {problem['_text']}"]
    own_hints = [hints[h]["_text"] for h in problem.get("ch_list", []) if h in hints]
    if own_hints:
        lines.append("Hints:\n" + "\n".join(f"- {h}" for h in own_hints))
    steps = [s["_text"] for s in problem.get("solution", {}).get("steps", [])]
    if steps:
        lines.append("Solution: " + " ".join(steps))
    lines.append(f"Answer: {problem['_answer']}")
    return "\n\n".join(lines)


def concept_document(concept: dict) -> str:
    """A named fact or theorem the problems use."""
    name = concept.get("name")
    return f"{name}: {concept['_text']}" if name else concept["_text"]


def conversation_document(problem: dict, conversation: dict) -> str:
    """A model's written solution: the problem, then every model turn of the conversation."""
    turns = [m["text"] for m in conversation.get("messages", [])
             if m.get("role", "").startswith("Model") and not m.get("error") and m.get("text")]
    return f"Problem: {problem['_text']}\n\n" + "\n\n".join(turns) if turns else ""


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """Concepts, then per problem (sorted by id) its human solution and its model solutions."""
    data = json.loads(archives["champ-dataset"].read(FILE))
    for key in sorted(data["concepts"]):
        yield concept_document(data["concepts"][key])
    for key in sorted(data["problems"]):
        problem = data["problems"][key]
        yield problem_document(problem, data["hints"])
        for conv_key in sorted(problem.get("conversations", {})):
            yield conversation_document(problem, problem["conversations"][conv_key])


RECIPE = Recipe(
    name="math", description="CHAMP competition math: problems, hints, human and model solutions",
    license="MIT", packages=PACKAGES, files=(FILE,), extract=extract, val_fraction=0.04,
)
