"""Group statistics: mean, spread and 95% intervals of every metric, and their stability.

Two intervals per group and metric, because they fail differently: the t interval assumes roughly
normal run-to-run noise and is exact for it; the percentile bootstrap assumes nothing about the
shape but is too narrow with the handful of seeds an experiment affords. Both need n >= 2; with one
run the interval is None (never a zero-width interval that would look like certainty).

Stability (docs/metrics.md, the T/W/R ablation's stability metrics):

* seed variance: the pooled within-(group, order) variance over seeds, i.e. run-to-run noise when
  only the seed changes;
* order variance: the variance over domain orders of the per-order means, i.e. how much the
  result depends on the order of the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
N_BOOT = 2000


def t_interval(x: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Student-t interval for the mean; None with fewer than two values."""
    a = np.asarray(x, dtype=float)
    if a.size < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size)
    return float(a.mean() - half), float(a.mean() + half)


def bootstrap_interval(
    x: Sequence[float], rng: np.random.Generator, level: float = LEVEL, n_boot: int = N_BOOT
) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean (resampling runs); None with fewer than two."""
    a = np.asarray(x, dtype=float)
    if a.size < 2:
        return None
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


@dataclass
class GroupStat:
    """Summary of one metric in one group (what a table cell and analysis.json hold)."""

    group: str
    metric: str
    n: int
    mean: float | None
    sd: float | None
    t_ci: tuple[float, float] | None
    boot_ci: tuple[float, float] | None
    seed_var: float | None
    order_var: float | None


def seed_variance(values: np.ndarray, orders: np.ndarray) -> float | None:
    """Pooled variance over seeds within each order (ddof 1); None when no order has two seeds."""
    num, den = 0.0, 0
    for o in np.unique(orders):
        v = values[orders == o]
        if v.size >= 2:
            num += float(v.var(ddof=1)) * (v.size - 1)
            den += v.size - 1
    return num / den if den else None


def order_variance(values: np.ndarray, orders: np.ndarray) -> float | None:
    """Variance over orders of the per-order means (ddof 1); None with fewer than two orders."""
    means = [values[orders == o].mean() for o in np.unique(orders)]
    return float(np.var(means, ddof=1)) if len(means) >= 2 else None


def group_stats(frame: pd.DataFrame, metrics: Sequence[str], seed: int = 0) -> list[GroupStat]:
    """Statistics of every metric in every group of ``frame`` (finished runs only).

    The bootstrap draws from one ``np.random.default_rng(seed)`` so a report is reproducible.
    """
    rng = np.random.default_rng(seed)
    out = []
    for group, g in frame.groupby("group", sort=False):
        orders = g["order"].astype(str).to_numpy()
        for metric in metrics:
            raw = g[metric].to_numpy(dtype=float)
            keep = np.isfinite(raw)
            v, o = raw[keep], orders[keep]
            out.append(
                GroupStat(
                    group=str(group),
                    metric=metric,
                    n=int(v.size),
                    mean=float(v.mean()) if v.size else None,
                    sd=float(v.std(ddof=1)) if v.size >= 2 else None,
                    t_ci=t_interval(v),
                    boot_ci=bootstrap_interval(v, rng),
                    seed_var=seed_variance(v, o),
                    order_var=order_variance(v, o),
                )
            )
    return out


@dataclass
class Comparison:
    """A group against the reference group on one metric: Welch's t-test on the difference."""

    group: str
    metric: str
    diff: float | None
    rel: float | None
    ci: tuple[float, float] | None
    p: float | None


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple:
    """mean(a) - mean(b), its Welch interval and two-sided p; None below n = 2 or without variance."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, None, None
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0.0:  # no run-to-run variation: nothing to test against
        return diff, None, None
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    p = float(2 * stats.t.sf(abs(diff) / se, dof))
    return diff, (diff - half, diff + half), p


def compare_to_reference(
    frame: pd.DataFrame, reference: str, metrics: Sequence[str]
) -> list[Comparison]:
    """Absolute and relative differences of every group's mean against the reference group."""
    ref = frame[frame["group"] == reference]
    out = []
    for group, g in frame.groupby("group", sort=False):
        if group == reference:
            continue
        for metric in metrics:
            a, b = g[metric].dropna(), ref[metric].dropna()
            if a.empty or b.empty:
                out.append(Comparison(str(group), metric, None, None, None, None))
                continue
            diff, ci, p = welch(a, b)
            base = float(b.mean())
            rel = diff / abs(base) if base != 0 else None
            out.append(Comparison(str(group), metric, diff, rel, ci, p))
    return out
