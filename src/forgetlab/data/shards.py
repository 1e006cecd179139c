"""Token shards: flat arrays of ids on disk (``train.bin``, ``val.bin``) and their manifest.

Each document's ids are followed by the end-of-text id. ``manifest.json`` is written last and
records every shard's token count and sha256; a shard is only ever read through a manifest that
agrees with its size, so a half-written or truncated shard cannot be used.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from forgetlab.data.errors import DataError
from forgetlab.data.fileio import atomic_open, atomic_write_json, read_json
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


VERIFIED_FILE = ".verified.json"
"""Beside each domain's shards: the (size, mtime, inode, manifest sha256) of every split whose
bytes were last hashed and found to match, with the largest id seen, so that a later process
skips the re-hash while the file is untouched."""

_verified_here: dict[tuple, int] = {}
"""This process's verifications: stat key -> largest token id (a shard is hashed once per process)."""


def _rebuild_advice(folder: Path, domain: str, manifest: dict) -> str:
    return (f"run `forgetlab data prepare --domains {domain} --tokenizer "
            f"{manifest['tokenizer']['name']}` to rebuild it (or delete {folder} first)")


def open_shard(folder: Path, split: str, manifest: dict, domain: str,
               verify: bool = False) -> np.ndarray:
    """Memory-map one split after checking it against the manifest.

    The size is checked on every open; the sha256 and the largest token id once per process and
    file version (see :func:`check_shard`), or always with ``verify=True``.
    """
    info = manifest["shards"][split]
    path = folder / info["file"]
    if not path.exists():
        raise DataError(f"domain '{domain}': shard {path} is missing although its manifest lists "
                        f"it; {_rebuild_advice(folder, domain, manifest)}.")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise DataError(
            f"domain '{domain}': shard {path} has {size} bytes but its manifest says "
            f"{info['bytes']} (truncated or corrupt); delete {folder} and run `forgetlab data "
            f"prepare --domains {domain} --tokenizer {manifest['tokenizer']['name']}`."
        )
    check_shard(folder, split, manifest, domain, force=verify)
    if info["tokens"] == 0:
        return np.zeros(0, dtype=info["dtype"])
    return np.memmap(path, dtype=info["dtype"], mode="r", shape=(info["tokens"],))


def check_shard(folder: Path, split: str, manifest: dict, domain: str,
                force: bool = False) -> None:
    """Raise :class:`DataError` unless the split's bytes hash to the manifest's sha256 and every
    id is below the tokenizer's vocabulary size.

    Hashing a shard costs one read of it; the result is remembered in this process and in
    ``.verified.json`` beside the shards, keyed by size, mtime_ns, ctime_ns, inode and the
    manifest's sha256, so a later open of the untouched file costs one ``stat``. Any write to the
    file (a copy, an in-place edit, a rebuild) changes the key and the next open re-hashes it.
    """
    info = manifest["shards"][split]
    path = folder / info["file"]
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
           info["sha256"])
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if not force and key in _verified_here:
        return
    cache_file = folder / VERIFIED_FILE
    cached = (read_json(cache_file) or {}) if not force else {}
    entry = cached.get(split)
    if not force and isinstance(entry, dict) and entry.get("key") == list(key[1:]):
        _verified_here[key] = int(entry["max_id"])
        return
    digest, max_id, first_bad = _hash_and_max(path, np.dtype(info["dtype"]), vocab)
    problems = []
    if digest != info["sha256"]:
        problems.append("does not match the sha256 in its manifest")
    if max_id >= vocab:
        problems.append(f"holds token id {max_id} (first out-of-range id at token {first_bad}) "
                        f">= the '{manifest['tokenizer']['name']}' vocabulary size {vocab}")
    if problems:
        raise DataError(f"domain '{domain}': shard {path} " + " and ".join(problems)
                        + f" (corrupt); {_rebuild_advice(folder, domain, manifest)}.")
    _verified_here[key] = max_id
    cached = read_json(cache_file) or {}  # another process may have added its splits meanwhile
    cached[split] = {"key": list(key[1:]), "max_id": max_id}
    with contextlib.suppress(OSError):  # a read-only cache: the verification holds here anyway
        atomic_write_json(cache_file, cached)


def _hash_and_max(path: Path, dtype: np.dtype, vocab: int,
                  chunk_tokens: int = 1 << 22) -> tuple[str, int, int | None]:
    """sha256, largest id and the index of the first id >= ``vocab`` (None if none), in one read."""
    digest, max_id, first_bad, offset = hashlib.sha256(), -1, None, 0
    with open(path, "rb") as f:
        while block := f.read(chunk_tokens * dtype.itemsize):
            digest.update(block)
            ids = np.frombuffer(block, dtype=dtype)
            if len(ids):
                m = int(ids.max())
                max_id = max(max_id, m)
                if m >= vocab and first_bad is None:
                    first_bad = offset + int(np.argmax(ids >= vocab))
            offset += len(ids)
    return digest.hexdigest(), max_id, first_bad


def verify_shard(folder: Path, split: str, manifest: dict, domain: str,
                 force: bool = False) -> None:
    """Size, sha256 and id check of one split (prepare uses it to decide whether shards on disk
    are current); ``force`` re-hashes even a file this process or the cache already verified."""
    info = manifest["shards"][split]
    path = folder / info["file"]
    if not path.exists() or path.stat().st_size != info["bytes"]:
        raise DataError(
            f"domain '{domain}': shard {path} is missing or does not have the size in its "
            f"manifest (corrupt); {_rebuild_advice(folder, domain, manifest)}."
        )
    check_shard(folder, split, manifest, domain, force=force)
