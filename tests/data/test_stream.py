"""Batches: random training windows and fixed validation windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forgetlab.data import DataError, fixed_windows, open_stream, sample_windows
from forgetlab.data import shards as shards_module


def test_sample_windows_are_shifted_pairs_reproducible_from_the_rng(fixture_data):
    tokens = open_stream(["math"], fixture_data.tokenizer, fixture_data.cache_dir)["math"].train
    x, y = sample_windows(tokens, np.random.default_rng(7), batch_size=8, block_size=64)
    x2, y2 = sample_windows(tokens, np.random.default_rng(7), batch_size=8, block_size=64)
    assert x.shape == y.shape == (8, 64) and str(x.dtype) == "torch.int64"
    assert (x[:, 1:] == y[:, :-1]).all() and (x == x2).all() and (y == y2).all()
    x3, _ = sample_windows(tokens, np.random.default_rng(8), batch_size=8, block_size=64)
    assert not (x == x3).all()


def test_sample_windows_reach_both_ends_of_a_short_split():
    tokens = np.arange(10, dtype=np.uint16)
    x, y = sample_windows(tokens, np.random.default_rng(0), batch_size=500, block_size=4)
    assert int(x[:, 0].min()) == 0 and int(y[:, -1].max()) == 9


def test_fixed_windows_span_the_split_evenly_without_overlap():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = fixed_windows(tokens, n_windows=10, block_size=32)
    starts = x[:, 0].numpy()
    assert starts[0] == 0 and y[-1, -1] == 999
    assert (np.diff(starts) >= 33).all()
    x2, _ = fixed_windows(tokens, n_windows=10, block_size=32)
    assert (x == x2).all()


def test_fixed_windows_overlap_on_a_short_split_and_refuse_a_too_short_one():
    tokens = np.arange(40, dtype=np.uint16)
    x, _ = fixed_windows(tokens, n_windows=8, block_size=16)
    assert x.shape == (8, 16)
    with pytest.raises(DataError, match=r"shorter than one window"):
        fixed_windows(tokens[:16], n_windows=2, block_size=16)
    with pytest.raises(DataError):
        sample_windows(tokens[:10], np.random.default_rng(0), 2, 16)


def _shard(root: str, tokenizer: str, domain: str, split: str) -> Path:
    return Path(root) / "shards" / tokenizer / domain / f"{split}.bin"


def test_a_shard_zeroed_in_place_after_it_was_verified_is_refused(
    fixture_data, tmp_path, copy_cache
):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    open_stream(["math"], fixture_data.tokenizer, root)  # verified and cached
    shard = _shard(root, fixture_data.tokenizer, "math", "val")
    size = shard.stat().st_size
    with open(shard, "r+b") as f:  # same size, same inode: only the contents change
        f.write(bytes(size))
    with pytest.raises(DataError, match=r"math.*val\.bin does not match the sha256.*prepare"):
        open_stream(["math"], fixture_data.tokenizer, root)


def test_an_out_of_vocabulary_token_id_is_named_with_its_shard(fixture_data, tmp_path, copy_cache):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    shard = _shard(root, fixture_data.tokenizer, "code", "train")
    with open(shard, "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 8)
    with pytest.raises(DataError, match=r"code.*train\.bin.*token id 65535 \(first out-of-range "
                       r"id at token 100\) >= the 'bpe-512' vocabulary size 512"):
        open_stream(["code"], fixture_data.tokenizer, root)


def test_shards_are_hashed_once_then_trusted_while_untouched(
    fixture_data, tmp_path, copy_cache, monkeypatch
):
    root = copy_cache(fixture_data.cache_dir, tmp_path / "c")
    hashed = []
    real = shards_module._hash_and_max
    monkeypatch.setattr(shards_module, "_hash_and_max", lambda p, *a: hashed.append(p.name)
                        or real(p, *a))
    monkeypatch.setattr(shards_module, "_verified_here", {})
    open_stream(["legal", "math"], fixture_data.tokenizer, root)
    assert sorted(hashed) == ["train.bin", "train.bin", "val.bin", "val.bin"]
    open_stream(["legal", "math"], fixture_data.tokenizer, root)  # same process: nothing re-read
    monkeypatch.setattr(shards_module, "_verified_here", {})  # a new process: the cache file
    open_stream(["legal", "math"], fixture_data.tokenizer, root)
    assert len(hashed) == 4
    open_stream(["math"], fixture_data.tokenizer, root, verify=True)  # forced: re-hashed
    assert len(hashed) == 6
