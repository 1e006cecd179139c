"""Experiments: a TOML spec of factors, levels, seeds, orders and budgets, expanded into runs,
planned (tokens, FLOPs, cost), executed locally or on Ray, and collected into results.parquet.

The exports load on first use: ``python -m forgetlab.experiments.worker`` imports this package
first, and must reach its parent-death guard (:func:`worker.die_with_parent`) before torch is
imported, which takes seconds on a busy machine; a worker whose orchestrator is killed meanwhile
would run on for that long.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgetlab.experiments.design import PlannedRun, design_groups, expand
    from forgetlab.experiments.plan import build_plan, gpu_cost, six_nd
    from forgetlab.experiments.runner import run_experiment
    from forgetlab.experiments.spec import ExperimentSpec, load_spec
    from forgetlab.experiments.store import ExperimentStore, preregistration_hash

_HOME = {
    "PlannedRun": "design",
    "design_groups": "design",
    "expand": "design",
    "build_plan": "plan",
    "gpu_cost": "plan",
    "six_nd": "plan",
    "run_experiment": "runner",
    "ExperimentSpec": "spec",
    "load_spec": "spec",
    "ExperimentStore": "store",
    "preregistration_hash": "store",
}

__all__ = [
    "ExperimentSpec",
    "ExperimentStore",
    "PlannedRun",
    "build_plan",
    "design_groups",
    "expand",
    "gpu_cost",
    "load_spec",
    "preregistration_hash",
    "run_experiment",
    "six_nd",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
