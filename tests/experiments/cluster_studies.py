"""Helpers for the cluster tests: a study written as TOML for the CLI, and the check that two
executors gave the same numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def same_numbers(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Every run's R-derived metrics equal, bit for bit (timings and memory may differ)."""
    metrics = [c for c in a.columns if c.split(".")[0] in ("loss", "bpb", "accuracy")]
    assert len(metrics) > 10
    left = a.set_index("run_id").sort_index()
    right = b.set_index("run_id").sort_index()
    assert list(left.index) == list(right.index)
    assert (right["status"] == "finished").all()
    pd.testing.assert_frame_equal(left[metrics], right[metrics], check_exact=True)


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in study.items()))
    return path
