"""The results table's metric columns and how a run.json becomes one row of them.

One place for the flat ``<kind>.<metric>`` and run-level columns, shared by the experiment store
(which writes ``results.parquet``) and the analysis loader (which rebuilds rows from run.json files
when ``results.parquet`` is missing). Which columns exist is the metric registry's
(:mod:`forgetlab.analysis.registry`); this module lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forgetlab.analysis.metrics import KINDS
from forgetlab.analysis.registry import MATRIX, PROBE, RUN, MatrixMetric, num

__all__ = ["KINDS", "PHASES", "empty_metrics", "flatten_record"]

# run.json's timing phases, in the order of a training step (the trainer writes them, the report
# tabulates them): a mechanism's batch making and extra steps (replay rows, selective write's
# scoring forward, sleep phases) are "mechanisms", not "data"
PHASES = ("data", "forward", "backward", "optimizer", "mechanisms", "eval")


def _schema_blocks() -> list[list[MatrixMetric]]:
    """The R-matrix metrics in the results tables' column order: the scalar ones every kind has,
    then the per-lag ones, then those only some kinds have (each block kind by kind)."""
    rank = {x.name: (x.kinds != KINDS, x.shape == "per_lag") for x in MATRIX}
    return [[x for x in MATRIX if rank[x.name] == r] for r in sorted(set(rank.values()))]


def empty_metrics(n_domains: int, probes: Sequence[str] = ()) -> dict[str, float]:
    """Every metric column of a run over ``n_domains`` probing ``probes``, NaN: the schema does
    not depend on which runs have finished."""
    names = [
        column
        for block in _schema_blocks()
        for kind in KINDS
        for x in block
        for column in x.columns(kind, n_domains)
    ]
    names += [column for x in PROBE for kind in KINDS for column in x.columns(kind, probes)]
    return dict.fromkeys([*names, *(x.name for x in RUN)], np.nan)


def flatten_record(record: dict[str, Any]) -> dict[str, float]:
    """A run.json's metrics and costs as flat columns (NaN where the run has no value)."""
    out: dict[str, float] = {}
    metrics = record.get("metrics") or {}
    for kind in KINDS:
        recorded = metrics.get(kind) or {}
        for x in MATRIX:
            if x.name not in recorded or x.shape == "per_domain":
                continue
            if x.shape == "per_lag":
                lags = recorded[x.name] or {}
                out.update({f"{kind}.{x.name}@{k}": num(v) for k, v in lags.items()})
            else:
                out[f"{kind}.{x.name}"] = num(recorded[x.name])
    probes = record.get("probes") or {}
    for kind, recorded in (probes.get("metrics") or {}).items():
        for x in PROBE:
            if x.name in recorded:
                out[f"{kind}.{x.name}"] = num(recorded[x.name]["mean"])
                for p, v in recorded[x.name]["per_probe"].items():
                    out[f"{kind}.{x.name}@{p}"] = num(v)
    for x in RUN:
        value = x.read(record)
        if value is not None:
            out[x.name] = value
    return out
