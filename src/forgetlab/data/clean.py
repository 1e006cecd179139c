"""Cleaning and exact deduplication, shared by every domain (built-in or user data).

Cleaning is deliberately light and lossless for meaning: line endings, control characters,
trailing spaces, runs of blank lines. Code keeps its indentation. Two documents are duplicates when
they are equal after collapsing all whitespace, so re-wrapped copies of a text count once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

from forgetlab.data.tokenizers import EOT

CLEAN_VERSION = 1
"""Bump when the rules below change: every corpus fingerprint includes it, so corpora rebuild."""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANKS = re.compile(r"\n{3,}")
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Canonical form of one document: ``\\n`` line ends, no control characters or byte-order
    marks, no trailing spaces, at most one blank line in a row, no leading/trailing blank lines.

    The end-of-text marker is removed from the text itself: it separates documents in the shards
    and must never appear inside one.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(EOT, "")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text)
    text = _BLANKS.sub("\n\n", text)
    return text.strip("\n").rstrip()


def dedup_key(text: str) -> bytes:
    """sha256 of the text with all whitespace collapsed: equal keys = duplicate documents."""
    return hashlib.sha256(_WS.sub(" ", text).strip().encode("utf-8")).digest()


def clean_documents(docs: Iterable[str], min_chars: int = 1) -> Iterator[tuple[bytes, str]]:
    """Normalised, non-trivial, first-seen documents with their dedup keys, in input order."""
    seen: set[bytes] = set()
    for raw in docs:
        text = normalize(raw)
        if len(text) < min_chars:
            continue
        key = dedup_key(text)
        if key not in seen:
            seen.add(key)
            yield key, text
