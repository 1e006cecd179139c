"""Group statistics: interval coverage on simulated data, hand-computed stability, Welch's test
(the other declared tests: test_declared_test.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forgetlab.analysis.stats import (
    bootstrap_interval,
    compare,
    group_stats,
    order_variance,
    seed_variance,
    t_interval,
)

SIMS = 500


def _binomial_band(p: float, n: int) -> tuple[float, float]:
    sd = np.sqrt(p * (1 - p) / n)
    return p - 3.5 * sd, p + 3.5 * sd


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(SIMS):
        lo, hi = t_interval(rng.normal(2.0, 1.5, size=5))
        hits += lo <= 2.0 <= hi
    lo_band, hi_band = _binomial_band(0.95, SIMS)
    assert lo_band <= hits / SIMS <= hi_band


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_with_30_runs():
    rng = np.random.default_rng(8)
    hits = 0
    for _ in range(SIMS):
        lo, hi = bootstrap_interval(rng.normal(-1.0, 0.5, size=30), rng, n_boot=1000)
        hits += lo <= -1.0 <= hi
    lo_band, hi_band = _binomial_band(0.95, SIMS)
    # The percentile bootstrap under-covers a little at n = 30 (about 0.93): allow one more point.
    assert lo_band - 0.01 <= hits / SIMS <= hi_band


def test_a_single_run_has_no_interval():
    assert t_interval([1.0]) is None
    assert bootstrap_interval([1.0], np.random.default_rng(0)) is None


def test_seed_and_order_variance_by_hand():
    values = np.array([1.0, 3.0, 10.0, 14.0])
    orders = np.array(["a", "a", "b", "b"])
    # within a: var(1, 3) = 2; within b: var(10, 14) = 8; pooled (1 df each) = 5
    assert seed_variance(values, orders) == pytest.approx(5.0)
    # order means 2 and 12: var = 50
    assert order_variance(values, orders) == pytest.approx(50.0)
    assert order_variance(values, np.array(["a"] * 4)) is None


def test_group_stats_are_reproducible_and_complete():
    df = pd.DataFrame(
        {
            "group": ["g"] * 4 + ["h"],
            "order": ["a", "a", "b", "b", "a"],
            "m": [1.0, 3.0, 10.0, 14.0, 2.0],
        }
    )
    a = group_stats(df, ["m"], seed=3)
    b = group_stats(df, ["m"], seed=3)
    assert a == b
    g, h = a
    assert (g.n, g.mean, g.sd) == (4, 7.0, pytest.approx(np.std([1, 3, 10, 14], ddof=1)))
    assert h.n == 1 and h.sd is None and h.t_ci is None and h.boot_ci is None


def test_welch_t_is_the_welch_formula():
    x, y = np.array([1.0, 2.0, 2.5, 4.0]), np.array([0.5, 0.7, 1.9])
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = np.sqrt(vx + vy)
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    d = x.mean() - y.mean()
    half = stats.t.ppf(0.975, dof) * se
    diff, ci, p = compare(x, y, "welch_t")
    assert diff == pytest.approx(d)
    assert p == pytest.approx(2 * stats.t.sf(abs(d) / se, dof))
    assert ci == pytest.approx((d - half, d + half))
    assert compare([1.0], y, "welch_t").p is None
    assert compare([1.0, 1.0], [2.0, 2.0], "welch_t").p is None  # neither varies
