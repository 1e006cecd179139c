"""Stage 1 of prepare: documents -> cleaned, deduplicated, split corpus on disk (tokenizer-free).

``corpus/<domain>/`` holds ``train.jsonl`` and ``val.jsonl`` (one JSON string per line) and
``corpus.json``, written last; a corpus without a matching ``corpus.json`` is rebuilt, never read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from forgetlab import __version__
from forgetlab.data.clean import CLEAN_VERSION, clean_documents
from forgetlab.data.errors import DataError
from forgetlab.data.fileio import (
    atomic_open,
    atomic_write_json,
    read_json,
    remove_stale_temps,
    sha256_bytes,
    sha256_file,
)
from forgetlab.data.paths import corpus_dir
from forgetlab.data.sources import DomainSource
from forgetlab.data.split import is_val

SPLITS = ("train", "val")


def corpus_fingerprint(source: DomainSource) -> str:
    """Hash of the source and the cleaning rules: equal fingerprints give equal corpora."""
    return sha256_bytes(f"{source.fingerprint()}:clean{CLEAN_VERSION}".encode())


def current_corpus(source: DomainSource, root: Path, fingerprint: str | None = None) -> dict | None:
    """The corpus record if the corpus on disk is complete and matches the source, else None."""
    folder = corpus_dir(root, source.name)
    record = read_json(folder / "corpus.json")
    fingerprint = fingerprint or corpus_fingerprint(source)
    if not record or record.get("fingerprint") != fingerprint:
        return None
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.exists() or path.stat().st_size != record["files"][split]["bytes"]:
            return None
    return record


def build_corpus(source: DomainSource, root: Path) -> dict:
    """Build (or reuse) the domain's corpus and return its record."""
    fingerprint = corpus_fingerprint(source)
    record = current_corpus(source, root, fingerprint)
    if record is not None:
        return record
    folder = corpus_dir(root, source.name)
    remove_stale_temps(folder)
    (folder / "corpus.json").unlink(missing_ok=True)
    counts = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
    with atomic_open(folder / "train.jsonl") as train, atomic_open(folder / "val.jsonl") as val:
        out = {"train": train, "val": val}
        for key, text in clean_documents(source.documents(root), source.min_chars):
            split = "val" if source.eval_only or is_val(key, source.val_fraction) else "train"
            out[split].write(json.dumps(text, ensure_ascii=False).encode("utf-8") + b"\n")
            counts[split]["documents"] += 1
            counts[split]["bytes"] += len(text.encode("utf-8"))
        check_not_empty(source, counts)  # inside the with: on error, no file is committed
    record = {
        "domain": source.name, "fingerprint": fingerprint, "source": source.describe(),
        "clean_version": CLEAN_VERSION, "forgetlab_version": __version__, "splits": counts,
        "files": {s: {"bytes": (folder / f"{s}.jsonl").stat().st_size,
                      "sha256": sha256_file(folder / f"{s}.jsonl")} for s in SPLITS},
    }
    atomic_write_json(folder / "corpus.json", record)
    return record


def check_not_empty(source: DomainSource, counts: dict) -> None:
    """An extraction that yields no usable document is an error, not an empty shard."""
    needed = ("val",) if source.eval_only else SPLITS
    empty = [s for s in needed if counts[s]["documents"] == 0]
    if not empty:
        return
    where = ", ".join(source.recipe.files) if source.recipe else json.dumps(
        source.user.model_dump(exclude_none=True) if source.user else {})
    raise DataError(
        f"domain '{source.name}': extraction gave no {' or '.join(empty)} documents from "
        f"{where}; check that the files exist and hold text (and, for a small source, that it "
        f"has enough documents for a validation split, or raise its val_fraction)."
    )


def read_documents(root: Path, domain: str, split: str) -> Iterator[str]:
    """Documents of one split of a built corpus, in stored order."""
    with open(corpus_dir(root, domain) / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
