"""The whole analysis of one experiment as one JSON-able dict: what analysis.json holds.

Every number the report shows is in here, so other tools read the analysis without parsing prose.
Each budget (same-shape, matched-FLOPs, ...) is analysed on its own: runs under different budgets
answer different questions and are never pooled.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from forgetlab.analysis.columns import PHASES
from forgetlab.analysis.conclusions import conclude
from forgetlab.analysis.effects import factorial_effects
from forgetlab.analysis.gains import marginal_gains
from forgetlab.analysis.hypotheses import ALIASES, judge
from forgetlab.analysis.load import FINISHED, Experiment, metric_columns, preregistration_hash
from forgetlab.analysis.registry import DEFAULT_PRIMARY, SECONDARY, lower_is_better
from forgetlab.analysis.stats import compare_to_reference, group_stats


def preregistration_status(meta: dict[str, Any]) -> dict[str, Any]:
    """The block, its stored hash, and whether it was changed or added after the first run.

    ``status``: ``absent`` (never any block), ``unchanged`` (the block hashed when the first run
    started, still the same), ``changed`` (a later invocation's block differs, or the stored block
    no longer matches its hash) or ``added`` (no block when the first run started: one given by a
    later invocation, or written into experiment.json afterwards). ``changed`` is true for both of
    the last two: their tests are exploratory.
    """
    block, stored = meta.get("preregistration"), meta.get("preregistration_sha256")
    now = meta.get("preregistration_sha256_now")
    if block is None and stored is None:
        block = meta.get("preregistration_now")  # given after the first run started
        status = "absent" if block is None else "added"
    elif stored is None:
        status, now = "added", preregistration_hash(block)  # written into experiment.json later
    elif block is not None and preregistration_hash(block) != stored:
        status, now = "changed", preregistration_hash(block)  # the stored block was edited
    elif meta.get("preregistration_changed") or (now is not None and now != stored):
        status = "changed"
    else:
        status = "unchanged"
    return {
        "status": status,
        "block": block,
        "sha256": stored,
        "sha256_now": now,
        "registered_at": meta.get("preregistered_at"),
        "changed": status in ("changed", "added"),
    }


def groups_table(exp: Experiment, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Each group's factor levels and its finished runs, seeds and orders."""
    levels = {r["group"]: r.get("levels") or {} for r in exp.meta.get("runs", [])}
    out = []
    for group in dict.fromkeys(exp.results["group"].astype(str)):
        g = frame[frame["group"] == group]
        out.append(
            {
                "group": group,
                "levels": levels.get(group, {}),
                "n_finished": len(g),
                "n_planned": int((exp.results["group"] == group).sum()),
                "seeds": sorted({int(s) for s in g["seed"].dropna()}),
                "orders": sorted(set(g["order"].astype(str))),
            }
        )
    return out


def performance(exp: Experiment, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per group: mean seconds per phase, throughput, MFU, peak memory and parameter counts."""
    out = []
    for group, g in frame.groupby("group", sort=False):
        recs = [exp.records[r] for r in g["run_id"] if r in exp.records]
        phases = {
            p: _mean([((r.get("timing") or {}).get("total") or {}).get(p) for r in recs])
            for p in PHASES
        }
        out.append(
            {
                "group": str(group),
                "phase_s": phases,
                "wall_s": _mean(g.get("wall_s", [])),
                "tokens_per_s": _mean(g.get("tokens_per_s", [])),
                "mfu": _mean(g.get("mfu", [])),
                "peak_rss_bytes": _mean(g.get("peak_rss_bytes", [])),
                "peak_cuda_bytes": _mean(
                    [(r.get("peak_memory") or {}).get("cuda_max_allocated") for r in recs]
                ),
                "params_total": _mean(g["params.total"]),
                "params_trainable": _mean(g["params.trainable"]),
                "flops_training": _mean(g.get("flops.training_total", [])),
            }
        )
    return out


def _mean(values: Any) -> float | None:
    xs = [float(v) for v in values if v is not None and not _isnan(v)]
    return float(np.mean(xs)) if xs else None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def analyse_budget(
    exp: Experiment, frame: pd.DataFrame, settings: dict[str, Any]
) -> dict[str, Any]:
    """Statistics, effects, gains, hypotheses and conclusions of one budget's finished runs."""
    primary, alpha, correction = settings["primary"], settings["alpha"], settings["correction"]
    metrics = metric_columns(frame)
    interactions = exp.meta.get("design") != "one_at_a_time"
    fits = {
        m: factorial_effects(frame, exp.factors, m, correction, alpha, interactions)
        for m in (primary, *SECONDARY)
        if m in frame
    }
    res = fits.get(primary)
    gains = marginal_gains(frame, exp.factors, primary) if primary in frame else {}
    prereg = exp.preregistration or {}
    reference = exp.reference if exp.reference in set(frame["group"]) else None
    return {
        "n_finished": len(frame),
        "groups": groups_table(exp, frame),
        "group_stats": [s.to_dict() for s in group_stats(frame, metrics, seed=settings["seed"])],
        "reference_comparison": (
            [c.to_dict() for c in compare_to_reference(frame, reference, metrics)]
            if reference
            else []
        ),
        "factorial": {m: r.to_dict() for m, r in fits.items()},
        "marginal_gains": {f: [p.to_dict() for p in pts] for f, pts in gains.items()},
        "hypotheses": [
            v.to_dict()
            for v in judge(
                prereg.get("hypotheses") or [],
                frame,
                metrics,
                res.terms if res else None,
                seed=settings["seed"],
            )
        ],
        "conclusions": conclude(
            res if res and res.factors else None,
            frame,
            exp.factors,
            primary,
            alpha,
            correction,
            gains,
            reference,
        ).to_dict(),
        "performance": performance(exp, frame),
    }


def analyse(exp: Experiment, seed: int = 0) -> dict[str, Any]:
    """The analysis.json document of an experiment (finished runs only; the rest are listed)."""
    prereg = exp.preregistration or {}
    settings = {
        "primary": prereg.get("primary_metric") or DEFAULT_PRIMARY,
        "alpha": float(prereg.get("alpha", 0.05)),
        "correction": str(prereg.get("correction") or "holm"),
        "test": prereg.get("test"),
        "co_primary": list(prereg.get("co_primary_metrics") or []),
        "secondary": list(prereg.get("secondary_metrics") or []),
        "seed": seed,
    }
    results = exp.results
    finished = exp.finished()
    status_counts = results["status"].fillna("missing").value_counts().to_dict()
    return {
        "experiment": {
            "name": exp.name,
            "design": exp.meta.get("design"),
            "scale": exp.meta.get("scale"),
            "factors": exp.factors,
            "reference": exp.reference,
            "started": exp.meta.get("started"),
            "finished": exp.meta.get("finished"),
        },
        "settings": {**settings, "primary_lower_is_better": lower_is_better(settings["primary"])},
        "preregistration": preregistration_status(exp.meta),
        "runs": [
            {
                k: _plain(r.get(k))
                for k in ("run_id", "group", "seed", "order", "budget", "status", "error")
            }
            for r in results.to_dict("records")
        ],
        "status_counts": {str(k): int(v) for k, v in status_counts.items()},
        "budgets": {
            str(b): analyse_budget(exp, g.reset_index(drop=True), settings)
            for b, g in finished.groupby("budget", sort=False)
        },
        "namespace": {a: {"column": c, "meaning": d} for a, (c, _, d) in ALIASES.items()},
        "finished_status": FINISHED,
    }


def _plain(v: Any) -> Any:
    """numpy scalars and NaN as JSON values."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if _isnan(v) else v


def jsonable(obj: Any) -> Any:
    """Deep copy with tuples as lists, numpy scalars as Python numbers and NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
