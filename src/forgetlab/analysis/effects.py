"""Factorial effects of the two-level factors: OLS with every interaction, type III ANOVA.

Coding (effect coding): a factor's first listed level is -1, its second +1; an interaction column is
the product of its factors' columns. The model is ``y ~ x_A * x_B * ... + C(order, Sum)``: seeds are
replicates, the domain order a block (only when the experiment has more than one order).

What we report as the *effect* of a term is the classic 2^k effect, ``2 * beta`` under the +-1
coding: for a main effect that is mean(y | +1) - mean(y | -1) in a balanced design, for an
interaction the same contrast on the product column. Its interval is 2x the OLS interval of beta.
F, p and partial eta squared (SS_term / (SS_term + SS_residual)) come from ``anova_lm(typ=3)``;
p is corrected across the factorial terms (not the block) with the pre-registered correction.

With no residual degrees of freedom (one run per cell) or a design that cannot estimate every term,
the estimates are still the contrasts above but interval, F and p are None and ``reason`` says why:
no significance is invented.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from forgetlab.config import ConfigError

CORRECTIONS = ("holm", "bonferroni", "fdr_bh", "none")
"""Family-wise (Holm, Bonferroni) or false-discovery-rate (Benjamini-Hochberg) corrections."""


def adjust_pvalues(p: list[float], method: str) -> list[float]:
    """Corrected p-values: Holm's step-down or Bonferroni (family-wise error), Benjamini-Hochberg's
    step-up (``fdr_bh``, false discovery rate), or none.

    Equal to ``statsmodels.stats.multitest.multipletests(p, method=...)[1]`` (a test checks it);
    written out because statsmodels' Holm branch calls ``gc.collect()`` on every call, which costs
    ~0.3 s in a process that holds a report's figures and frames.
    """
    if method not in CORRECTIONS:  # never Holm in place of a correction it does not know
        raise ConfigError(f"preregistration.correction = {method!r}: allowed {list(CORRECTIONS)}")
    a = np.asarray(p, dtype=float)
    if method == "none" or a.size == 0:
        return a.tolist()
    if method == "bonferroni":
        return np.minimum(a * a.size, 1.0).tolist()
    order = np.argsort(a)
    if method == "fdr_bh":  # p_(i) * m / i, made monotone from the largest p down
        scaled = a[order] * a.size / np.arange(1, a.size + 1)
        out = np.empty_like(a)
        out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        return out.tolist()
    stepped = np.maximum.accumulate(a[order] * np.arange(a.size, 0, -1))
    out = np.empty_like(a)
    out[order] = np.minimum(stepped, 1.0)
    return out.tolist()


@dataclass
class EffectTerm:
    """One main effect or interaction of the factorial model."""

    term: str
    factors: tuple[str, ...]
    estimate: float | None
    ci: tuple[float, float] | None = None
    F: float | None = None
    p: float | None = None
    p_corrected: float | None = None
    partial_eta_sq: float | None = None
    df: float | None = None

    @property
    def order(self) -> int:
        return len(self.factors)


@dataclass
class OrderBlock:
    """The domain order as a block of the factorial model: its F test and partial eta squared."""

    F: float | None
    p: float | None
    df: float
    partial_eta_sq: float | None


@dataclass
class FactorialResult:
    """Every term's effect on one metric, and whether they could be tested."""

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("testable",)

    metric: str
    factors: list[str]
    n_runs: int
    interactions: bool
    blocked: bool
    correction: str
    alpha: float
    terms: list[EffectTerm] = field(default_factory=list)
    residual_df: float | None = None
    block: OrderBlock | None = None
    reason: str | None = None

    @property
    def testable(self) -> bool:
        return self.reason is None

    def term(self, name: str) -> EffectTerm | None:
        return next((t for t in self.terms if t.term == name), None)


def two_level_factors(factors: dict[str, list[str]], frame: pd.DataFrame) -> dict[str, list[str]]:
    """The factors with exactly two levels that the results table records."""
    return {f: lv for f, lv in factors.items() if len(lv) == 2 and f"factor.{f}" in frame}


def coded_frame(frame: pd.DataFrame, factors: dict[str, list[str]], metric: str) -> pd.DataFrame:
    """y, one +-1 column per factor (x0, x1, ... in factor order) and the order block."""
    out = pd.DataFrame({"y": frame[metric].astype(float), "block": frame["order"].astype(str)})
    for i, (f, levels) in enumerate(factors.items()):
        out[f"x{i}"] = frame[f"factor.{f}"].astype(str).map({levels[0]: -1.0, levels[1]: 1.0})
    return out.dropna().reset_index(drop=True)


def _subsets(k: int, interactions: bool) -> list[tuple[int, ...]]:
    top = k if interactions else 1
    return [c for r in range(1, top + 1) for c in itertools.combinations(range(k), r)]


def contrast(d: pd.DataFrame, idx: tuple[int, ...]) -> float | None:
    """mean(y | product of the columns = +1) - mean(y | product = -1): the classic 2^k effect."""
    code = np.prod([d[f"x{i}"].to_numpy() for i in idx], axis=0)
    hi, lo = d["y"][code > 0], d["y"][code < 0]
    return float(hi.mean() - lo.mean()) if len(hi) and len(lo) else None


def _why_untestable(d: pd.DataFrame, exog: np.ndarray, n_factors: int) -> str | None:
    n, p = exog.shape
    if n_factors == 0:
        return "no two-level factors"
    if np.linalg.matrix_rank(exog) < p:
        cells = d[[f"x{i}" for i in range(n_factors)]].drop_duplicates()
        return (
            f"the design cannot estimate every term: {len(cells)} of {2**n_factors} factor "
            "combinations have finished runs"
        )
    if np.ptp(d["y"].to_numpy()) <= 1e-12 * max(1.0, float(np.abs(d["y"]).max())):
        return "the metric does not vary across runs"
    if n <= p:
        return (
            f"too few runs for a test: {n} finished runs for {p} model parameters "
            f"(needs at least {p + 1}: add seeds as replicates)"
        )
    return None


def factorial_effects(
    frame: pd.DataFrame,
    factors: dict[str, list[str]],
    metric: str,
    correction: str = "holm",
    alpha: float = 0.05,
    interactions: bool = True,
) -> FactorialResult:
    """Fit the effect-coded OLS for ``metric`` over the finished runs in ``frame``."""
    if correction not in CORRECTIONS:
        raise ConfigError(
            f"preregistration.correction = {correction!r}: allowed {list(CORRECTIONS)}"
        )
    two = two_level_factors(factors, frame)
    names = list(two)
    d = coded_frame(frame, two, metric)
    blocked = d["block"].nunique() > 1
    res = FactorialResult(metric, names, len(d), interactions, blocked, correction, alpha)
    subsets = _subsets(len(names), interactions)
    labels = {s: ":".join(names[i] for i in s) for s in subsets}
    if not names or d.empty:
        res.reason = "no two-level factors" if not names else "no finished runs with this metric"
        return res
    rhs = (" * " if interactions else " + ").join(f"x{i}" for i in range(len(names)))
    formula = f"y ~ {rhs}" + (" + C(block, Sum)" if blocked else "")
    model = smf.ols(formula, data=d)
    res.reason = _why_untestable(d, model.exog, len(names))
    if res.reason is not None:
        res.terms = [
            EffectTerm(labels[s], tuple(names[i] for i in s), contrast(d, s)) for s in subsets
        ]
        return res
    fit = model.fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(fit, typ=3)
    ci = fit.conf_int(alpha=0.05)
    ss_resid = float(table.loc["Residual", "sum_sq"])
    res.residual_df = float(fit.df_resid)
    for s in subsets:
        key = ":".join(f"x{i}" for i in s)
        ss = float(table.loc[key, "sum_sq"])
        res.terms.append(
            EffectTerm(
                term=labels[s],
                factors=tuple(names[i] for i in s),
                estimate=2 * float(fit.params[key]),
                ci=(2 * float(ci.loc[key, 0]), 2 * float(ci.loc[key, 1])),
                F=_num(table.loc[key, "F"]),
                p=_num(table.loc[key, "PR(>F)"]),
                partial_eta_sq=ss / (ss + ss_resid) if ss + ss_resid > 0 else None,
                df=float(table.loc[key, "df"]),
            )
        )
    _correct(res.terms, correction)
    if blocked:
        row = table.loc["C(block, Sum)"]
        ss = float(row["sum_sq"])
        res.block = OrderBlock(
            F=_num(row["F"]),
            p=_num(row["PR(>F)"]),
            df=float(row["df"]),
            partial_eta_sq=ss / (ss + ss_resid) if ss + ss_resid > 0 else None,
        )
    return res


def _num(x: object) -> float | None:
    v = float(x)  # type: ignore[arg-type]
    return v if math.isfinite(v) else None


def _correct(terms: list[EffectTerm], correction: str) -> None:
    """Fill ``p_corrected`` across the terms that have a p (the family of the factorial test)."""
    tested = [t for t in terms if t.p is not None]
    if not tested:
        return
    corrected = adjust_pvalues([t.p for t in tested], correction)  # type: ignore[misc]
    for t, pc in zip(tested, corrected, strict=True):
        t.p_corrected = float(pc)  # type: ignore[arg-type]
