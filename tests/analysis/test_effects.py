"""Factorial effects against statsmodels fitted directly and against a hand-built 2^3 table."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from forgetlab.analysis.effects import adjust_pvalues, factorial_effects

FACTORS = {"A": ["a0", "a1"], "B": ["b0", "b1"], "C": ["c0", "c1"]}
# Known classic effects (mean(+1) - mean(-1)) = 2 x the coefficients used to generate y.
TRUE = {"A": 1.0, "B": -0.6, "C": 0.0, "A:B": 0.4, "A:C": 0.0, "B:C": 0.2, "A:B:C": 0.0}


def table(reps: int, noise: float, orders: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for a, b, c in itertools.product([-1, 1], repeat=3):
        for rep, o in itertools.product(range(reps), range(orders)):
            coded = {"A": a, "B": b, "C": c}
            y = 5.0 + 0.1 * (o - (orders - 1) / 2)
            for term, eff in TRUE.items():
                y += eff / 2 * np.prod([coded[f] for f in term.split(":")])
            rows.append(
                {
                    **{f"factor.{f}": FACTORS[f][(coded[f] + 1) // 2] for f in FACTORS},
                    "order": f"order{o}",
                    "seed": rep,
                    "y": y + rng.normal(0, noise),
                }
            )
    return pd.DataFrame(rows)


def test_effects_equal_twice_the_coefficients_of_statsmodels_fitted_directly():
    df = table(reps=3, noise=0.05)
    res = factorial_effects(df, FACTORS, "y", correction="none")
    d = pd.DataFrame(
        {f"x{f}": df[f"factor.{f}"].map({lv[0]: -1.0, lv[1]: 1.0}) for f, lv in FACTORS.items()}
    )
    d["y"], d["block"] = df["y"], df["order"]
    fit = smf.ols("y ~ xA * xB * xC + C(block, Sum)", data=d).fit()
    aov = anova_lm(fit, typ=3)
    for t in res.terms:
        key = ":".join(f"x{f}" for f in t.factors)
        assert t.estimate == pytest.approx(2 * fit.params[key])
        lo, hi = fit.conf_int().loc[key]
        assert t.ci == pytest.approx((2 * lo, 2 * hi))
        assert pytest.approx(aov.loc[key, "F"]) == t.F
        assert t.p == pytest.approx(aov.loc[key, "PR(>F)"])
        assert t.p_corrected == t.p
        ss = aov.loc[key, "sum_sq"]
        assert t.partial_eta_sq == pytest.approx(ss / (ss + aov.loc["Residual", "sum_sq"]))
    assert res.blocked and res.block is not None
    assert res.residual_df == pytest.approx(fit.df_resid)


def test_recovers_known_effects_of_a_2x2x2_table_with_small_noise():
    df = table(reps=2, noise=0.02, seed=1)
    res = factorial_effects(df, FACTORS, "y")
    assert res.testable
    for t in res.terms:
        coded = np.prod(
            [np.where(df[f"factor.{f}"] == FACTORS[f][1], 1, -1) for f in t.factors], axis=0
        )
        hand = df["y"][coded > 0].mean() - df["y"][coded < 0].mean()  # the hand-computed contrast
        assert t.estimate == pytest.approx(hand, abs=1e-9)
        assert t.estimate == pytest.approx(TRUE[t.term], abs=0.03)
        significant = t.p_corrected < 0.05
        assert significant == (TRUE[t.term] != 0.0), t


@pytest.mark.parametrize("method", ["holm", "bonferroni", "fdr_bh"])
def test_corrections_match_statsmodels_multipletests(method):
    p = [0.001, 0.04, 0.03, 0.5, 0.012, 0.2]
    assert adjust_pvalues(p, method) == pytest.approx(list(multipletests(p, method=method)[1]))
    assert adjust_pvalues(p, "none") == p


def test_benjamini_hochberg_by_hand_and_every_declarable_correction_is_computed():
    # sorted 0.01, 0.03, 0.04 -> x3/1, x3/2, x3/3 = 0.03, 0.045, 0.04 -> monotone: 0.03, 0.04, 0.04
    assert adjust_pvalues([0.01, 0.04, 0.03], "fdr_bh") == pytest.approx([0.03, 0.04, 0.04])
    from forgetlab.analysis.effects import CORRECTIONS
    from forgetlab.experiments.spec import CORRECTIONS as DECLARABLE

    assert set(DECLARABLE) == set(CORRECTIONS)  # a spec may declare none the analysis lacks


def test_one_run_per_cell_says_too_few_runs_and_invents_no_p_values():
    df = table(reps=1, noise=0.05, orders=1)
    res = factorial_effects(df, FACTORS, "y")
    assert not res.testable
    assert "too few runs" in res.reason
    assert all(t.p is None and t.ci is None and t.F is None for t in res.terms)
    assert res.term("A").estimate == pytest.approx(1.0, abs=0.1)  # the contrast is still shown


def test_missing_factor_combination_is_named_not_fitted():
    df = table(reps=2, noise=0.05)
    df = df[~((df["factor.A"] == "a1") & (df["factor.B"] == "b1"))]
    res = factorial_effects(df, FACTORS, "y")
    assert not res.testable and "6 of 8 factor combinations" in res.reason


def test_constant_metric_is_not_tested():
    df = table(reps=2, noise=0.0).assign(y=3.0)
    res = factorial_effects(df, FACTORS, "y")
    assert res.reason == "the metric does not vary across runs"


def test_main_effects_only_for_one_at_a_time_designs():
    res = factorial_effects(table(reps=2, noise=0.05), FACTORS, "y", interactions=False)
    assert [t.term for t in res.terms] == ["A", "B", "C"]
