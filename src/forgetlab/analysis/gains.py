"""Marginal-gain curves: what each level of a factor buys in the primary metric per extra FLOP.

The T/W/R ablation (docs/cl_mechanisms.md) asks for the marginal-gain curve of every mechanism and
the gain per unit of FLOPs.
For a factor with levels l_0, l_1, ... (listed order; l_0 is the reference), averaging over the
other factors: ``gain_i`` = improvement of the primary metric at l_i over l_0 (sign-adjusted so that
positive is better), ``extra_flops_i`` = mean training FLOPs at l_i minus at l_0, and the marginal
gain ``(gain_i - gain_{i-1}) / (extra_flops_i - extra_flops_{i-1})`` (None when the step costs no
FLOPs). Returns that shrink level after level are *diminishing*.

"Averaging over the other factors" means the unweighted mean of the cell means (a cell = one
combination of the other factors' levels), so that a study with unequal runs per cell -- some runs
failed, or it was stopped part-way -- does not credit a level with the cost or the metric of the
cells it happens to have more runs in. With equal runs per cell it is the plain mean.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd

from forgetlab.analysis.registry import lower_is_better

FLOPS = "flops.training_total"


@dataclass
class GainPoint:
    """One level of one factor on its marginal-gain curve."""

    factor: str
    level: str
    n: int
    value: float
    flops: float | None
    gain: float
    extra_flops: float | None
    marginal_gain_per_flop: float | None


def level_mean(frame: pd.DataFrame, factor: str, level: str, column: str) -> float | None:
    """Mean of ``column`` at ``factor = level``: the unweighted mean over the other factors'
    cells of each cell's mean (None without a value)."""
    g = frame[frame[f"factor.{factor}"].astype(str) == level]
    g = g[g[column].notna()] if column in g else g.iloc[0:0]
    if g.empty:
        return None
    others = [c for c in g.columns if c.startswith("factor.") and c != f"factor.{factor}"]
    if not others:
        return float(g[column].mean())
    return float(g.groupby(others, dropna=False)[column].mean().mean())


def marginal_gains(
    frame: pd.DataFrame, factors: dict[str, list[str]], metric: str
) -> dict[str, list[GainPoint]]:
    """The curve of every factor recorded in ``frame`` (finished runs only)."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    curves: dict[str, list[GainPoint]] = {}
    for factor, levels in factors.items():
        col = f"factor.{factor}"
        if col not in frame:
            continue
        points: list[GainPoint] = []
        for level in levels:
            g = frame[frame[col].astype(str) == level]
            v = g[metric].dropna()
            if v.empty:
                continue
            flops = level_mean(frame, factor, level, FLOPS) if FLOPS in frame else None
            value = level_mean(frame, factor, level, metric)
            assert value is not None  # v is not empty
            first = points[0] if points else None
            gain = 0.0 if first is None else sign * (value - first.value)
            extra = (
                None
                if first is None or flops is None or first.flops is None
                else flops - first.flops
            )
            marginal = None
            if points and extra is not None and points[-1].extra_flops is not None:
                step = extra - points[-1].extra_flops
                marginal = (gain - points[-1].gain) / step if step > 0 else None
            points.append(
                GainPoint(
                    factor,
                    level,
                    len(v),
                    value,
                    flops,
                    gain,
                    0.0 if first is None and flops is not None else extra,
                    marginal,
                )
            )
        if len(points) >= 2:
            curves[factor] = points
    return curves


def diminishing(points: list[GainPoint]) -> bool | None:
    """Whether each step's gain per FLOP is below the previous one; None below three levels."""
    m = [p.marginal_gain_per_flop for p in points[1:]]
    if len(m) < 2 or any(x is None for x in m):
        return None
    return all(b < a for a, b in itertools.pairwise(m))  # type: ignore[operator]
