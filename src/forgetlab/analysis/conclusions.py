"""Conclusions computed from the numbers: every sentence of the report's findings comes from here.

Definitions (the report's appendix repeats them):

* *benefit*: a difference signed so that positive is better for the metric (lower forgetting, loss
  and cost are better; see :func:`forgetlab.analysis.registry.lower_is_better`).
* a mechanism *has an effect* when its main effect's corrected p is below alpha (for a 1-df term
  that is stricter than "the 95% interval excludes zero", which is reported as *nominal*).
* an interaction is *super-additive* when it is significant and its benefit is positive: switching
  its factors on together is better than the sum of switching each on alone predicts (for two
  factors: [mu(++) - mu(--)] - [mu(+-) - mu(--)] - [mu(-+) - mu(--)] = 2 x the interaction effect);
  *sub-additive* when significant with negative benefit (redundant or diminishing mechanisms).
* the *minimal mechanism set*: among the factor combinations, the one with the fewest factors at
  their "on" (second) level whose mean primary metric is not significantly worse than the best
  combination's: the pre-registered pairwise test of every combination against the best (Welch t
  under ``anova``, the test of a factor design; :mod:`forgetlab.analysis.procedure`), corrected
  with the pre-registered correction; ties go to the better mean, then the fewer FLOPs.
* a group is *better* / *worse* than the reference when the pairwise test's corrected p is below
  alpha, signed by the test's estimate (difference of means, or the Hodges-Lehmann shift under
  Mann-Whitney); under an omnibus test (``anova`` / ``kruskal`` in a group design) only when the
  omnibus across the groups rejects too.
* a mechanism's *cost buys no significant gain* when it adds training FLOPs (mean at "on" above
  mean at "off", both as means of cell means, see :func:`forgetlab.analysis.gains.level_mean`)
  and its main effect is not significant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from forgetlab.analysis.effects import FactorialResult, adjust_pvalues
from forgetlab.analysis.gains import GainPoint, diminishing, level_mean
from forgetlab.analysis.procedure import ESTIMATES, LABELS
from forgetlab.analysis.registry import lower_is_better
from forgetlab.analysis.stats import Omnibus, adjust, compare, compare_to_reference, omnibus_tests

FLOPS = "flops.training_total"


@dataclass
class MinimalSet:
    """The best factor combination and, when the runs allow the tests, the minimal one.

    Either ``reason`` says why the minimal set is not determined, or ``minimal`` (its levels),
    ``on`` (its factors at their "on" level), ``minimal_mean``, every combination not significantly
    worse than the best and each one's corrected p against the best are given.
    """

    JSON_OMIT_NONE: ClassVar[tuple[str, ...]] = (
        "reason",
        "minimal",
        "on",
        "minimal_mean",
        "not_worse_than_best",
        "p_corrected_vs_best",
    )

    best: dict[str, str]
    best_mean: float
    reason: str | None = None
    minimal: dict[str, str] | None = None
    on: list[str] | None = None
    minimal_mean: float | None = None
    not_worse_than_best: list[dict[str, str]] | None = None
    p_corrected_vs_best: dict[str, float] | None = None


@dataclass
class Conclusions:
    """The computed findings: structured for analysis.json, and as sentences for the report."""

    significant: list[str] = field(default_factory=list)
    nominal: list[str] = field(default_factory=list)
    super_additive: list[str] = field(default_factory=list)
    sub_additive: list[str] = field(default_factory=list)
    largest: str | None = None
    minimal_set: MinimalSet | None = None
    costly_without_gain: list[str] = field(default_factory=list)
    diminishing: list[str] = field(default_factory=list)
    versus_reference: dict[str, list[str]] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)


def _benefit(x: float, metric: str) -> float:
    return -x if lower_is_better(metric) else x


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def effect_findings(res: FactorialResult, out: Conclusions) -> None:
    """Which mechanisms and interactions matter, from the primary metric's factorial fit."""
    m = res.metric
    if not res.testable:
        out.statements.append(
            f"No significance test of the factorial effects on {m}: {res.reason}. "
            "The effect estimates are shown without intervals."
        )
        return
    for t in res.terms:
        if t.estimate is None or t.ci is None:
            continue
        sig = t.p_corrected is not None and t.p_corrected < res.alpha
        excl = t.ci[0] > 0 or t.ci[1] < 0
        good = "improves" if _benefit(t.estimate, m) > 0 else "worsens"
        where = f"effect {_fmt(t.estimate)} [{_fmt(t.ci[0])}, {_fmt(t.ci[1])}], p_{res.correction} = {_fmt(t.p_corrected)}"
        if t.order == 1 and sig:
            out.significant.append(t.term)
            out.statements.append(f"Mechanism {t.term} {good} {m} significantly ({where}).")
        elif t.order == 1 and excl:
            out.nominal.append(t.term)
            out.statements.append(
                f"Mechanism {t.term}: 95% interval excludes zero but not significant after the "
                f"{res.correction} correction ({where})."
            )
        elif t.order == 1:
            out.statements.append(f"Mechanism {t.term}: no significant effect on {m} ({where}).")
        elif sig:
            kind = "super-additive" if _benefit(t.estimate, m) > 0 else "sub-additive"
            (out.super_additive if kind == "super-additive" else out.sub_additive).append(t.term)
            out.statements.append(f"Interaction {t.term} is {kind} on {m} ({where}).")
    mains = [t for t in res.terms if t.order == 1 and t.term in out.significant]
    if mains:
        top = max(mains, key=lambda t: abs(t.estimate or 0.0))
        out.largest = top.term
        out.statements.append(f"Largest significant main effect on {m}: {top.term}.")
    if res.block and res.block.p is not None:
        word = "matters" if res.block.p < res.alpha else "shows no significant effect"
        out.statements.append(f"Domain order (block) {word} (p = {_fmt(res.block.p)}).")


def minimal_set(
    frame: pd.DataFrame,
    factors: dict[str, list[str]],
    metric: str,
    alpha: float,
    correction: str,
    pairwise: str = "welch_t",
    seed: int = 0,
) -> MinimalSet | None:
    """The minimal mechanism set (module docstring), by the ``pairwise`` test; None without
    two-level factors."""
    if not factors or frame.empty:
        return None
    cols = [f"factor.{f}" for f in factors]
    cells = {
        tuple(str(x) for x in k): g[metric].dropna()
        for k, g in frame.groupby(cols, sort=False)
        if g[metric].notna().any()
    }
    if not cells:
        return None
    flops = {
        tuple(str(x) for x in k): float(g[FLOPS].mean()) if FLOPS in g else 0.0
        for k, g in frame.groupby(cols, sort=False)
    }
    means = {k: _benefit(float(v.mean()), metric) for k, v in cells.items()}
    best = max(means, key=lambda k: means[k])
    others = [k for k in cells if k != best]
    out = MinimalSet(best=_levels(best, factors), best_mean=float(cells[best].mean()))
    tests = {k: compare(cells[k], cells[best], pairwise, seed) for k in others}
    if any(p is None for _, _, p in tests.values()):
        out.reason = (
            "too few runs for a test (a combination has fewer than two finished runs or no variance)"
        )
        return out
    ps = [t[2] for t in tests.values()]
    corrected = adjust_pvalues(ps, correction)
    ok = [best] + [k for k, p in zip(others, corrected, strict=True) if p >= alpha]

    def on(k: tuple[str, ...]) -> list[str]:
        return [f for f, level in zip(factors, k, strict=True) if level == factors[f][1]]

    chosen = min(ok, key=lambda k: (len(on(k)), -means[k], flops.get(k, 0.0)))
    out.minimal = _levels(chosen, factors)
    out.on = on(chosen)
    out.minimal_mean = float(cells[chosen].mean())
    out.not_worse_than_best = [_levels(k, factors) for k in ok]
    out.p_corrected_vs_best = {
        "/".join(k): float(p) for k, p in zip(others, corrected, strict=True)
    }
    return out


def _combo(levels: dict[str, str]) -> str:
    return ", ".join(f"{f}={v}" for f, v in levels.items())


def _levels(k: tuple[str, ...], factors: dict[str, list[str]]) -> dict[str, str]:
    return dict(zip(factors, k, strict=True))


def costly_without_gain(
    res: FactorialResult, frame: pd.DataFrame, factors: dict[str, list[str]], alpha: float
) -> list[str]:
    """Main factors that add FLOPs while their effect is not significant (only when testable)."""
    if not res.testable or FLOPS not in frame:
        return []
    out = []
    for f, (off, on) in factors.items():
        t = res.term(f)
        at_on, at_off = level_mean(frame, f, on, FLOPS), level_mean(frame, f, off, FLOPS)
        extra = at_on - at_off if at_on is not None and at_off is not None else 0.0
        if t is not None and extra > 0 and (t.p_corrected is None or t.p_corrected >= alpha):
            out.append(f)
    return out


def conclude(
    res: FactorialResult | None,
    frame: pd.DataFrame,
    factors: dict[str, list[str]],
    metric: str,
    alpha: float,
    correction: str,
    gains: dict[str, list[GainPoint]],
    reference: str | None,
    pairwise: str = "welch_t",
    omnibus_test: str | None = None,
    seed: int = 0,
) -> Conclusions:
    """All computed findings for one budget's finished runs; group-versus-group p-values come from
    the ``pairwise`` test, gated by ``omnibus_test`` where the procedure has one."""
    out = Conclusions()
    two = {f: lv for f, lv in factors.items() if len(lv) == 2 and f"factor.{f}" in frame}
    if res is not None and res.factors:
        effect_findings(res, out)
        out.minimal_set = minimal_set(frame, two, metric, alpha, correction, pairwise, seed)
        found = out.minimal_set
        if found and found.minimal is not None:
            on = ", ".join(found.on or []) or "none (the all-off combination)"
            out.statements.append(
                f"Minimal mechanism set: {on} (mean {metric} {_fmt(found.minimal_mean)}, not "
                f"significantly worse than the best combination {_combo(found.best)} at "
                f"{_fmt(found.best_mean)})."
            )
        elif found:
            out.statements.append(
                f"Best combination by mean {metric}: {_combo(found.best)}; minimal set not "
                f"determined: {found.reason}."
            )
        out.costly_without_gain = costly_without_gain(res, frame, two, alpha)
        for f in out.costly_without_gain:
            out.statements.append(
                f"Mechanism {f} adds FLOPs but buys no significant gain on {metric}."
            )
    for f, points in gains.items():
        if diminishing(points):
            out.diminishing.append(f)
            out.statements.append(
                f"Factor {f} shows diminishing returns per FLOP across its levels."
            )
    if reference:
        out.versus_reference = versus_reference(
            frame, reference, metric, alpha, correction, out, pairwise, omnibus_test, seed
        )
    return out


def versus_reference(
    frame: pd.DataFrame,
    reference: str,
    metric: str,
    alpha: float,
    correction: str,
    out: Conclusions,
    pairwise: str = "welch_t",
    omnibus_test: str | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Groups significantly better / worse than the reference by their adjusted p (the
    ``pairwise`` test corrected across the groups, behind the ``omnibus_test`` gate when given;
    :func:`forgetlab.analysis.stats.adjust`), or untestable."""
    verdicts: dict[str, list[str]] = {
        "better": [],
        "worse": [],
        "no_difference": [],
        "untestable": [],
    }
    gates = omnibus_tests(frame, [metric], omnibus_test) if omnibus_test else []
    tests = [
        c
        for c in adjust(
            compare_to_reference(frame, reference, [metric], pairwise, seed), correction, gates
        )
        if c.diff is not None
    ]
    too_few = [c.group for c in tests if c.p is None]
    if gates and len(too_few) < len(tests):
        out.statements.append(_gate_statement(gates[0], reference, alpha, pairwise))
    for c in tests:
        p = c.p_adjusted
        key = (
            "untestable"
            if p is None
            else "no_difference"
            if p >= alpha
            else "better"
            if _benefit(c.diff or 0.0, metric) > 0
            else "worse"
        )
        verdicts[key].append(c.group)
        if key in ("better", "worse"):
            gated = f", gated by {LABELS[gates[0].test]} p = {_fmt(gates[0].p)}" if gates else ""
            out.statements.append(
                f"Group {c.group} is significantly {key} than the reference {reference} on "
                f"{metric} ({ESTIMATES[pairwise]} {_fmt(c.diff)}, {LABELS[pairwise]} "
                f"p_{correction} = {_fmt(p)}{gated})."
            )
    if too_few:
        out.statements.append(
            f"Groups {', '.join(too_few)}: too few runs to test against {reference}."
        )
    return verdicts


def _gate_statement(gate: Omnibus, reference: str, alpha: float, pairwise: str) -> str:
    """What the omnibus test across the groups decided, in one sentence."""
    name = LABELS[gate.test]
    if gate.p is None:
        return (
            f"No {name} across the groups on {gate.metric} (fewer than two groups with two runs, "
            "or no variation): no group is compared with the reference."
        )
    if gate.p < alpha:
        return (
            f"{name} across the groups: they differ on {gate.metric} (p = {_fmt(gate.p)}); each "
            f"group against {reference} by {LABELS[pairwise]} tests."
        )
    return (
        f"{name} across the groups finds no difference on {gate.metric} (p = {_fmt(gate.p)}): "
        f"no group is declared different from {reference}, whatever its pairwise "
        f"{LABELS[pairwise]} p."
    )
