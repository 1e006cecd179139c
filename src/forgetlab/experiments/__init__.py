"""Experiments: a TOML spec of factors, levels, seeds, orders and budgets, expanded into runs,
planned (tokens, FLOPs, cost), executed locally or on Ray, and collected into results.parquet."""

from forgetlab.experiments.design import PlannedRun, design_groups, expand
from forgetlab.experiments.plan import build_plan, gpu_cost, six_nd
from forgetlab.experiments.runner import run_experiment
from forgetlab.experiments.spec import ExperimentSpec, load_spec
from forgetlab.experiments.store import ExperimentStore, preregistration_hash

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
