"""Pure functions over a run's training curves and counters: convergence, time to target, MFU.

The trainer calls them when it writes its record (run.json), so the numbers a run reports and the
numbers a notebook recomputes from ``curves.parquet`` come from one place. A curve row is a dict
with at least ``stage`` and ``stage_step``; in-stage evaluations of the new domain add
``val_loss``, ``train_tokens`` and ``train_s`` (training seconds of the stage so far).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from forgetlab.analysis.metrics import convergence_steps

EVAL_PHASE = "eval"
"""The timing phase that is not training: time to target and throughput leave it out."""


def train_seconds(phases: Mapping[str, float]) -> float:
    """Seconds spent training (every phase but evaluation), summed in the phases' order."""
    return sum(v for p, v in phases.items() if p != EVAL_PHASE)


def stage_evaluations(curves: Sequence[Mapping[str, Any]], stage: int) -> list[Mapping[str, Any]]:
    """The in-stage evaluation rows of ``stage`` (those with a ``val_loss``), in curve order."""
    return [r for r in curves if r.get("stage") == stage and r.get("val_loss") is not None]


def convergence_by_stage(
    r_loss: Sequence[Sequence[float]], curves: Sequence[Mapping[str, Any]]
) -> list[float | None]:
    """Per stage ``s``, :func:`convergence_steps` of the new domain's loss curve: the point
    ``(0, R[s][s])`` (its loss before the stage) followed by the stage's in-stage evaluations;
    None where the stage has no evaluation."""
    out: list[float | None] = []
    for s in range(len(r_loss[0]) if r_loss else 0):
        pts = [(0, r_loss[s][s])] + [(r["stage_step"], r["val_loss"]) for r in
                                      stage_evaluations(curves, s)]
        out.append(
            convergence_steps([p[0] for p in pts], [p[1] for p in pts]) if len(pts) > 1 else None
        )
    return out


def time_to_target(
    curves: Sequence[Mapping[str, Any]], n_stages: int, target_ppl: float
) -> list[dict[str, float] | None]:
    """Per stage, the first in-stage evaluation whose perplexity on the new domain is at or
    below ``target_ppl``: its stage-local optimizer steps, training tokens and training seconds
    (evaluation time excluded) and the perplexity; None where the stage never reached it."""
    out: list[dict[str, float] | None] = []
    for s in range(n_stages):
        rows = sorted(stage_evaluations(curves, s), key=lambda r: r["stage_step"])
        hit = next((r for r in rows if math.exp(r["val_loss"]) <= target_ppl), None)
        out.append(
            None if hit is None else {
                "steps": hit["stage_step"],
                "tokens": hit["train_tokens"],
                "train_s": hit["train_s"],
                "ppl": math.exp(hit["val_loss"]),
            }
        )
    return out


def throughput(
    flops_total: Mapping[str, float],
    timing_total: Mapping[str, float],
    peak_flops: float | None,
    peak_source: str,
    devices: int,
) -> dict[str, Any]:
    """Training tokens/s and FLOP/s over training seconds, and the model FLOPs utilisation.

    ``flops_total`` holds the run's ``train``, ``extra_steps`` (optimizer steps mechanisms asked
    for) and ``train_tokens`` totals, ``timing_total`` seconds per phase; see :func:`mfu`.
    """
    train_s = train_seconds(timing_total)
    train_flops = flops_total["train"] + flops_total["extra_steps"]
    flops_per_s = train_flops / train_s if train_s else None
    return {
        "train_tokens_per_s": flops_total["train_tokens"] / train_s if train_s else None,
        "train_flops_per_s": flops_per_s,
        "peak_flops": peak_flops,
        "peak_source": peak_source,
        "mfu": mfu(flops_per_s, peak_flops, devices),
        "devices": devices,
    }


def mfu(flops_per_s: float | None, peak_flops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation per device: the achieved model FLOP/s over the peak of all
    ``devices`` together (Chowdhery et al., 2022, PaLM, appendix B); None when either is unknown."""
    return flops_per_s / (peak_flops * devices) if peak_flops and flops_per_s else None
