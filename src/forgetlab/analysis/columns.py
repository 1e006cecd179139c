"""The results table's metric columns and how a run.json becomes one row of them.

One place for the flat ``<kind>.<metric>`` and run-level columns, shared by the experiment store
(which writes ``results.parquet``), the analysis loader (which rebuilds rows from run.json files
when ``results.parquet`` is missing) and the spec validator (which refuses metric names that no
column carries).
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("loss", "bpb", "accuracy")
# run.json's timing phases, in the order of a training step (the trainer writes them, the report
# tabulates them): a mechanism's batch making and extra steps (replay rows, selective write's
# scoring forward, sleep phases) are "mechanisms", not "data"
PHASES = ("data", "forward", "backward", "optimizer", "mechanisms", "eval")
KIND_METRICS = ("ACC", "BWT", "FWT", "average_forgetting", "plasticity")
RUN_METRICS = (
    "convergence_mean",
    "steps_to_target",
    "tokens_to_target",
    "time_to_target_s",
    "flops.training_total",
    "flops.total_with_eval",
    "train_tokens",
    "wall_s",
    "tokens_per_s",
    "mfu",
    "peak_rss_bytes",
    "params.total",
    "params.trainable",
    "params.frozen",
)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else np.nan


def _mean_reached(values: list[Any]) -> float:
    """Mean over the stages that reached the target; NaN when one did not (never a partial
    mean that would flatter a run that missed the target on some domain)."""
    if not values or any(v is None for v in values):
        return np.nan
    return float(np.mean(values))


def empty_metrics(n_domains: int) -> dict[str, float]:
    """Every metric column, NaN: the schema does not depend on which runs have finished."""
    names = [f"{k}.{m}" for k in KINDS for m in KIND_METRICS]
    names += [f"{k}.retention@{i}" for k in KINDS for i in range(1, n_domains)]
    names += ["loss.final_mean", "bpb.final_mean", *RUN_METRICS]
    return dict.fromkeys(names, np.nan)


def flatten_record(record: dict[str, Any]) -> dict[str, float]:
    """A run.json's metrics and costs as flat columns (NaN where the run has no value)."""
    out: dict[str, float] = {}
    metrics = record.get("metrics") or {}
    for kind in KINDS:
        m = metrics.get(kind) or {}
        for name in (*KIND_METRICS, "final_mean"):
            if name in m:
                out[f"{kind}.{name}"] = _num(m[name])
        for k, v in (m.get("retention") or {}).items():
            out[f"{kind}.retention@{k}"] = _num(v)
    steps = [s for s in metrics.get("convergence_steps") or [] if s is not None]
    out["convergence_mean"] = float(np.mean(steps)) if steps else np.nan
    target = metrics.get("time_to_target")
    if target:
        for column, key in (("steps_to_target", "steps"), ("tokens_to_target", "tokens"),
                            ("time_to_target_s", "train_s")):
            out[column] = _mean_reached([t and t[key] for t in target])
    total = (record.get("flops") or {}).get("total") or {}
    if total:
        out["flops.training_total"] = _num(total.get("training_total"))
        out["flops.total_with_eval"] = _num(total.get("training_total")) + _num(total.get("eval"))
    out["train_tokens"] = _num((record.get("tokens") or {}).get("train_total"))
    timing = record.get("timing") or {}
    out["wall_s"] = float(sum((timing.get("total") or {}).values())) if timing else np.nan
    throughput = timing.get("throughput") or {}
    out["tokens_per_s"] = _num(throughput.get("train_tokens_per_s"))
    out["mfu"] = _num(throughput.get("mfu"))
    out["peak_rss_bytes"] = _num((record.get("peak_memory") or {}).get("cpu_max_rss"))
    params = record.get("parameters") or {}
    out["params.total"] = _num(params.get("total"))
    out["params.trainable"] = _num(params.get("trainable"))
    out["params.frozen"] = out["params.total"] - out["params.trainable"]
    return out
