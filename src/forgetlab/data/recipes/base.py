"""What a built-in domain is: pinned packages, the files inside them, and how to turn them into
documents. Cleaning, dedup and the split are shared (``clean.py``, ``split.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.fileio import sha256_bytes

Extractor = Callable[[dict[str, Archive]], Iterator[str]]


@dataclass(frozen=True)
class Recipe:
    """A built-in domain. ``revision`` is bumped whenever ``extract`` changes its output."""

    name: str
    description: str
    license: str
    packages: tuple[Package, ...]
    files: tuple[str, ...]
    extract: Extractor = field(compare=False)
    val_fraction: float = 0.05
    eval_only: bool = False
    min_chars: int = 20
    revision: int = 1

    def describe(self) -> dict:
        """Plain, JSON-able description (goes into the manifest and the fingerprint)."""
        return {
            "kind": "builtin", "name": self.name, "revision": self.revision,
            "description": self.description, "license": self.license,
            "packages": [p.as_dict() for p in self.packages], "files": list(self.files),
            "val_fraction": self.val_fraction, "eval_only": self.eval_only,
            "min_chars": self.min_chars,
        }

    def fingerprint(self) -> str:
        """Hash of everything that decides the corpus bytes."""
        return sha256_bytes(json.dumps(self.describe(), sort_keys=True).encode())
