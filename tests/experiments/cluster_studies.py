"""Helpers for the cluster tests: a study written as TOML for the CLI, and the check that two
executors gave the same numbers."""

from __future__ import annotations

import pandas as pd

from micro_run import write_toml as write_study  # noqa: F401  (the cluster tests' name for it)


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Every run's R-derived metrics equal, bit for bit (timings and memory may differ)."""
    metrics = [c for c in a.columns if c.split(".")[0] in ("loss", "bpb", "accuracy")]
    assert len(metrics) > 10
    left = a.set_index("run_id").sort_index()
    right = b.set_index("run_id").sort_index()
    assert list(left.index) == list(right.index)
    assert (right["status"] == "finished").all()
    pd.testing.assert_frame_equal(left[metrics], right[metrics], check_exact=True)
