"""Token shards: flat arrays of ids on disk (``train.bin``, ``val.bin``) and their manifest.

Each document's ids are followed by the end-of-text id. ``manifest.json`` is written last and
records every shard's token count and sha256; a shard is only ever read through a manifest that
agrees with its size, so a half-written or truncated shard cannot be used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from forgetlab.data.errors import DataError
from forgetlab.data.fileio import atomic_open, read_json
from forgetlab.data.tokenizers import Tokenizer

SHARD_FORMAT = 1
"""Bump when the shard layout changes: it is part of every shard fingerprint."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (all tokenizers up to 65,536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_shard(path: Path, docs: Iterable[str], tokenizer: Tokenizer,
                chunk_docs: int = 512) -> dict:
    """Tokenize ``docs`` in chunks and stream the ids to ``path`` atomically; return its stats."""
    dtype = token_dtype(tokenizer.vocab_size)
    digest, tokens, n_docs = hashlib.sha256(), 0, 0
    with atomic_open(path) as f:
        for chunk in _chunks(docs, chunk_docs):
            ids = tokenizer.encode_batch(chunk)
            flat = np.fromiter(_with_eot(ids, tokenizer.eot_id), dtype=dtype,
                               count=sum(map(len, ids)) + len(ids))
            data = flat.tobytes()
            f.write(data)
            digest.update(data)
            tokens += len(flat)
            n_docs += len(chunk)
    return {"file": path.name, "tokens": tokens, "documents": n_docs, "dtype": dtype.name,
            "bytes": tokens * dtype.itemsize, "sha256": digest.hexdigest()}


def _chunks(docs: Iterable[str], size: int) -> Iterable[list[str]]:
    """Lists of at most ``size`` documents."""
    chunk: list[str] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _with_eot(ids: list[list[int]], eot: int) -> Iterable[int]:
    """All ids, each document followed by the end-of-text id."""
    for doc in ids:
        yield from doc
        yield eot


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a shard folder, or None if there is none (or it is unreadable)."""
    return read_json(folder / "manifest.json")


def open_shard(folder: Path, split: str, manifest: dict, domain: str) -> np.ndarray:
    """Memory-map one split after checking its size against the manifest."""
    info = manifest["shards"][split]
    path = folder / info["file"]
    if not path.exists():
        raise DataError(f"domain '{domain}': shard {path} is missing although its manifest lists "
                        f"it; run `forgetlab data prepare --domains {domain} --tokenizer "
                        f"{manifest['tokenizer']['name']}` to rebuild it.")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise DataError(
            f"domain '{domain}': shard {path} has {size} bytes but its manifest says "
            f"{info['bytes']} (truncated or corrupt); delete {folder} and run `forgetlab data "
            f"prepare --domains {domain} --tokenizer {manifest['tokenizer']['name']}`."
        )
    if info["tokens"] == 0:
        return np.zeros(0, dtype=info["dtype"])
    return np.memmap(path, dtype=info["dtype"], mode="r", shape=(info["tokens"],))


def verify_shard(folder: Path, split: str, manifest: dict, domain: str) -> None:
    """Full sha256 check of one split (slower than the size check; used by prepare and verify)."""
    from forgetlab.data.fileio import sha256_file

    info = manifest["shards"][split]
    path = folder / info["file"]
    if not path.exists() or sha256_file(path) != info["sha256"]:
        raise DataError(
            f"domain '{domain}': shard {path} does not match the sha256 in its manifest "
            f"(corrupt); delete {folder} and run `forgetlab data prepare --domains {domain} "
            f"--tokenizer {manifest['tokenizer']['name']}`."
        )
