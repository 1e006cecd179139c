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

Comparisons: each group against the reference by the pairwise test the pre-registration declares
(:func:`compare`; which test a declaration means per design is :mod:`forgetlab.analysis.procedure`)
and, where it declares one, the omnibus test across the groups (:func:`omnibus`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from forgetlab.analysis.effects import adjust_pvalues
from forgetlab.analysis.procedure import PAIRWISE_TESTS

LEVEL = 0.95
N_BOOT = 2000
N_PERMUTATIONS = 9999  # random arrangements of a permutation test (p resolution 1e-4); exact below


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
    """A group against the reference group on one metric, by the pre-registered pairwise test:
    its difference (``test``'s estimate, see :func:`compare`), relative difference, interval, p."""

    group: str
    metric: str
    diff: float | None
    rel: float | None
    ci: tuple[float, float] | None
    p: float | None
    test: str
    # p corrected across the groups (and gated by the omnibus test where there is one): what
    # decides whether the group differs, see :func:`adjust`
    p_adjusted: float | None = None


class Difference(NamedTuple):
    """What :func:`compare` returns: the estimate, its interval (None where the test gives none)
    and the two-sided p (None when the samples cannot be tested)."""

    diff: float
    ci: tuple[float, float] | None
    p: float | None


def compare(
    a: Sequence[float], b: Sequence[float], test: str, seed: int = 0, level: float = LEVEL
) -> Difference:
    """Sample ``a`` against sample ``b`` by the pairwise ``test``; every pairwise p comes from here.

    * ``welch_t``: mean(a) - mean(b), its Welch interval and p (``scipy.stats.ttest_ind`` with
      ``equal_var=False``); no p when a sample has fewer than two values or neither varies.
    * ``mann_whitney``: the Hodges-Lehmann shift, median of all differences a_i - b_j (the shift
      the U test is about: its sign is the sign of U - n_a n_b / 2, so a "better" verdict never
      contradicts the test), no interval, and the two-sided U test's p: exact without ties when a
      sample has at most 8 values, the exact permutation distribution of U with ties when there
      are at most :data:`N_PERMUTATIONS` arrangements, else the normal approximation (tie and
      continuity corrected).
    * ``permutation``: mean(a) - mean(b), no interval, and the two-sided p of a permutation test of
      it (``scipy.stats.permutation_test``): exact when the C(n_a + n_b, n_a) arrangements number
      at most :data:`N_PERMUTATIONS`, else that many random ones drawn from
      ``np.random.default_rng(seed)``, so the same analysis gives the same p.

    Rank and permutation tests need two values per sample and some variation in the pooled sample.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if test == "welch_t":
        return _welch(x, y, level)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([x, y])
    testable = x.size >= 2 and y.size >= 2 and np.ptp(pooled) > 0
    if test == "mann_whitney":
        shift = float(np.median(np.subtract.outer(x, y)))
        if not testable:
            return Difference(shift, None, None)
        if np.unique(pooled).size == pooled.size:
            method: Any = "exact" if min(x.size, y.size) <= 8 else "asymptotic"
        elif math.comb(pooled.size, x.size) <= N_PERMUTATIONS:
            method = stats.PermutationMethod(n_resamples=N_PERMUTATIONS, rng=rng)
        else:
            method = "asymptotic"
        res = stats.mannwhitneyu(x, y, alternative="two-sided", method=method)
        return Difference(shift, None, _finite(res.pvalue))
    if test == "permutation":
        diff = float(x.mean() - y.mean())
        if not testable:
            return Difference(diff, None, None)
        res = stats.permutation_test(
            (x, y),
            _mean_difference,
            permutation_type="independent",
            vectorized=True,
            n_resamples=N_PERMUTATIONS,
            alternative="two-sided",
            rng=rng,
        )
        return Difference(diff, None, _finite(res.pvalue))
    raise ValueError(f"pairwise test {test!r}: allowed {list(PAIRWISE_TESTS)}")


def _welch(x: np.ndarray, y: np.ndarray, level: float) -> Difference:
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return Difference(diff, None, None)  # no run-to-run variation: nothing to test against
    with warnings.catch_warnings():
        # scipy warns when values agree to ~7 digits (float32 metrics of near-identical runs);
        # float64 moments of such values are still exact to ~9 digits, and the p stands
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=False)
    interval = res.confidence_interval(level)
    return Difference(diff, (float(interval.low), float(interval.high)), _finite(res.pvalue))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _finite(p: Any) -> float | None:
    v = float(p)
    return v if math.isfinite(v) else None


def compare_to_reference(
    frame: pd.DataFrame,
    reference: str,
    metrics: Sequence[str],
    test: str = "welch_t",
    seed: int = 0,
) -> list[Comparison]:
    """Every group against the reference group on every metric, by the pairwise ``test``.

    ``rel`` is the difference relative to the reference's centre: its mean for the mean-difference
    tests, its median for the Hodges-Lehmann shift.
    """
    ref = frame[frame["group"] == reference]
    out = []
    for group, g in frame.groupby("group", sort=False):
        if group == reference:
            continue
        for metric in metrics:
            a, b = _finite_values(g[metric]), _finite_values(ref[metric])
            if not a.size or not b.size:
                out.append(Comparison(str(group), metric, None, None, None, None, test))
                continue
            diff, ci, p = compare(a, b, test, seed)
            base = float(np.median(b) if test == "mann_whitney" else b.mean())
            rel = diff / abs(base) if base != 0 else None
            out.append(Comparison(str(group), metric, diff, rel, ci, p, test))
    return out


def adjust(
    comparisons: list[Comparison], correction: str, gates: Sequence[Omnibus] = ()
) -> list[Comparison]:
    """Fill each comparison's ``p_adjusted``: per metric, its p corrected across the groups with
    ``correction``; where ``gates`` holds an omnibus test of that metric, the larger of that and
    the omnibus p (None where the omnibus has none). A group differs at level alpha exactly when
    the omnibus and its corrected pairwise test both reject: max(p_omnibus, p_corrected) < alpha.
    """
    gate_of = {g.metric: g for g in gates}
    for metric in dict.fromkeys(c.metric for c in comparisons):
        tested = [c for c in comparisons if c.metric == metric and c.p is not None]
        corrected = adjust_pvalues([c.p for c in tested], correction)  # type: ignore[misc]
        gate = gate_of.get(metric)
        for c, p in zip(tested, corrected, strict=True):
            if gate is None:
                c.p_adjusted = float(p)
            else:
                c.p_adjusted = None if gate.p is None else max(float(p), gate.p)
    return comparisons


def _finite_values(column: pd.Series) -> np.ndarray:
    v = column.to_numpy(dtype=float)
    return v[np.isfinite(v)]


@dataclass
class Omnibus:
    """The omnibus test across the groups on one metric (group designs under anova / kruskal):
    the one-way ANOVA F or the Kruskal-Wallis H, its p, and the groups it covered."""

    metric: str
    test: str
    statistic: float | None
    p: float | None
    groups: list[str]


def omnibus(samples: dict[str, np.ndarray], test: str, metric: str = "") -> Omnibus:
    """``test`` (``anova``: ``scipy.stats.f_oneway``; ``kruskal``: ``scipy.stats.kruskal``) across
    the samples with at least two values each; no statistic with fewer than two such groups or
    when the pooled values do not vary."""
    kept = {g: v for g, v in samples.items() if v.size >= 2}
    out = Omnibus(metric, test, None, None, list(kept))
    if len(kept) < 2 or np.ptp(np.concatenate(list(kept.values()))) == 0:
        return out
    if test == "anova":
        res = stats.f_oneway(*kept.values())
    elif test == "kruskal":
        res = stats.kruskal(*kept.values())
    else:
        raise ValueError(f"omnibus test {test!r}: allowed ['anova', 'kruskal']")
    out.statistic, out.p = _finite(res.statistic), _finite(res.pvalue)
    if out.p is None:
        out.statistic = None
    return out


def omnibus_tests(frame: pd.DataFrame, metrics: Sequence[str], test: str) -> list[Omnibus]:
    """The omnibus ``test`` across the groups of ``frame`` on every metric."""
    return [
        omnibus(
            {str(g): _finite_values(sub[metric]) for g, sub in frame.groupby("group", sort=False)},
            test,
            metric,
        )
        for metric in metrics
    ]
