"""Batches: random training windows and fixed validation windows."""

from __future__ import annotations

import numpy as np
import pytest

from forgetlab.data import DataError, fixed_windows, open_stream, sample_windows


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
