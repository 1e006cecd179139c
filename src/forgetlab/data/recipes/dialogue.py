"""dialogue: the Chit-Chat dataset, 7,168 real two-person text chats."""

from __future__ import annotations

import json
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("chitchat-dataset", "0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl",
            "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"),
)
FILE = "chitchat_dataset/dataset.json"


def chat_document(chat: dict) -> str:
    """A chat as ``A: ...`` / ``B: ...`` lines; a speaker's consecutive messages form one turn."""
    speakers: dict[str, str] = {}
    lines = []
    for turn in chat.get("messages", []):
        texts = [m["text"].strip() for m in turn if m.get("text", "").strip()]
        if not texts:
            continue
        sender = turn[0].get("sender", "")
        label = speakers.setdefault(sender, chr(ord("A") + min(len(speakers), 25)))
        lines.append(f"{label}: " + " ".join(texts))
    return "\n".join(lines)


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """One document per chat, sorted by chat id."""
    data = json.loads(archives["chitchat-dataset"].read(FILE))
    for key in sorted(data):
        yield chat_document(data[key])


RECIPE = Recipe(
    name="dialogue", description="Chit-Chat dataset: two-person text chats",
    license="MIT", packages=PACKAGES, files=(FILE,), extract=extract, val_fraction=0.04,
)
