"""Reading prepared data: a ``Stream`` of domains, each with train/val token memmaps, and the two
ways the trainer cuts them into (x, y) windows."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forgetlab.data.errors import DataError
from forgetlab.data.paths import data_root, shard_dir
from forgetlab.data.recipes import RECIPES
from forgetlab.data.shards import open_shard, read_manifest
from forgetlab.data.tokenizers import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    import torch


def prepare_command(domain: str, tokenizer: str) -> str:
    """The exact command that builds a missing domain (user domains also need their sources)."""
    cmd = f"forgetlab data prepare --domains {domain} --tokenizer {tokenizer}"
    return cmd if domain in RECIPES else f"{cmd} (with its [data.sources.{domain}] given)"


class DomainData:
    """One prepared domain: ``train`` and ``val`` id arrays (memory-mapped) and the manifest."""

    def __init__(self, name: str, folder: Path, manifest: dict, vocab_size: int,
                 verify: bool = False) -> None:
        self.name, self.folder, self.manifest = name, folder, manifest
        self.vocab_size = vocab_size
        self.train = open_shard(folder, "train", manifest, name, verify)
        self.val = open_shard(folder, "val", manifest, name, verify)
        self._unigram: np.ndarray | None = None

    def unigram_counts(self) -> np.ndarray:
        """Count of every id in the train split, shape (vocab_size,), computed once."""
        if self._unigram is None:
            self._unigram = np.bincount(np.asarray(self.train), minlength=self.vocab_size).astype(
                np.int64)
        return self._unigram

    def __repr__(self) -> str:
        return f"DomainData({self.name!r}, train={len(self.train):,}, val={len(self.val):,})"


class Stream(Mapping[str, DomainData]):
    """Domains in stream order: ``stream[name]``, iteration in order, ``.tokenizer``."""

    def __init__(self, tokenizer: Tokenizer, data: dict[str, DomainData]) -> None:
        self.tokenizer = tokenizer
        self._data = data
        self.domains = list(data)

    def __getitem__(self, name: str) -> DomainData:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.domains)

    def __len__(self) -> int:
        return len(self.domains)

    def __repr__(self) -> str:
        return f"Stream({self.domains}, tokenizer={self.tokenizer.name!r})"


def open_stream(domains: list[str], tokenizer: str, cache_dir: str | None = None,
                verify: bool = False) -> Stream:
    """Open prepared domains; every shard is checked against the tokenizer it was made with and
    against its manifest: size on every open, sha256 and largest token id once per process and
    file version (cached beside the shards, see :func:`~forgetlab.data.shards.check_shard`), or
    on every open with ``verify=True``."""
    root = data_root(cache_dir)
    tok = load_tokenizer(tokenizer, cache_dir)
    data = {}
    for name in domains:
        folder = shard_dir(root, tokenizer, name)
        manifest = read_manifest(folder)
        if manifest is None:
            raise DataError(f"domain '{name}' is not prepared for tokenizer '{tokenizer}' "
                            f"(missing {folder / 'manifest.json'}); run `"
                            f"{prepare_command(name, tokenizer)}`.")
        if manifest["tokenizer"]["sha256"] != tok.sha256:
            raise DataError(f"domain '{name}': {folder} was tokenized with a different "
                            f"'{tokenizer}' than the one in the cache now; run `"
                            f"{prepare_command(name, tokenizer)}` to re-tokenize it.")
        data[name] = DomainData(name, folder, manifest, tok.vocab_size, verify)
    return Stream(tok, data)


def check_length(tokens: np.ndarray, block_size: int) -> int:
    """Length of ``tokens``, which must hold at least one window of block_size + 1 ids."""
    n = len(tokens)
    if n < block_size + 1:
        raise DataError(f"a split of {n} tokens is shorter than one window of block_size + 1 = "
                        f"{block_size + 1}; use a smaller block_size or more data.")
    return n


def gather_windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> np.ndarray:
    """Windows of block_size + 1 ids at ``starts``, shape (len(starts), block_size + 1), int64."""
    idx = starts[:, None] + np.arange(block_size + 1)[None, :]
    return np.asarray(tokens[idx]).astype(np.int64)


def split_xy(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of block_size + 1 ids as inputs and next-token targets."""
    import torch

    t = torch.from_numpy(windows)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def _to_xy(tokens: np.ndarray, starts: np.ndarray, block_size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows of block_size + 1 ids at ``starts`` and split them into inputs and targets."""
    return split_xy(gather_windows(tokens, starts, block_size))


def sample_windows(tokens: np.ndarray, rng: np.random.Generator, batch_size: int,
                   block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: ``batch_size`` windows at uniform random offsets drawn from ``rng``;
    ``y`` is ``x`` shifted by one token."""
    n = check_length(tokens, block_size)
    starts = rng.integers(0, n - block_size, size=batch_size)
    return _to_xy(tokens, starts, block_size)


def fixed_windows(tokens: np.ndarray, n_windows: int, block_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_windows`` evenly spaced windows spanning the whole split (fixed validation batches).

    Windows do not overlap when the split is long enough; on a shorter split they overlap rather
    than repeat the same text less evenly.
    """
    n = check_length(tokens, block_size)
    starts = np.linspace(0, n - block_size - 1, num=n_windows).round().astype(np.int64)
    return _to_xy(tokens, starts, block_size)
