"""The study record (docs/memory_ffn.md): analysis.json, report.md, report.html, plots/.

The answer comes first, then the plots, then the detail. Sections, in order (:data:`SECTIONS`, one
function each, all called as ``section(doc, ctx)``): header (what was run, warnings); answer
(question, hypothesis verdicts with n, the primary metric per group with its intervals and the
difference to the reference, the effects, conclusions); with a joint-training group, every group
between naive and joint training; whether the runs learned beyond word
frequencies; plots; goal and hypotheses;
pre-registration; configuration (factors, groups, the shared settings that matter, every per-group
difference); results in detail (per budget: every metric, intervals, stability, comparisons, the
full effect tables, marginal gains, timing/memory/parameters, verdict evidence); execution;
environment and command lines; generation samples; definitions; the full resolved configuration,
folded. A new section is a function of ``(doc, ctx)`` added to :data:`SECTIONS` where it belongs.
Every number comes from :func:`analyse`; nothing is hand-written.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from forgetlab.analysis import plots
from forgetlab.analysis.analyse import analyse
from forgetlab.analysis.columns import PHASES
from forgetlab.analysis.configdiff import ConfigComparison, compare_configs
from forgetlab.analysis.doc import Doc
from forgetlab.analysis.document import (
    ANALYSIS_JSON,
    Analysis,
    BudgetAnalysis,
    ExperimentInfo,
    GroupPerformance,
    GroupRow,
    Preregistration,
    RegisteredHypothesis,
    RunRow,
    Settings,
    from_json,
    to_json,
)
from forgetlab.analysis.effects import EffectTerm, FactorialResult
from forgetlab.analysis.floor import UNIGRAM_MARGIN, Shortfall, shortfalls
from forgetlab.analysis.gains import GainPoint
from forgetlab.analysis.hypotheses import ALIASES, TEST_FAMILIES, Verdict, identifier, referenced
from forgetlab.analysis.joint import Bounds, Placement
from forgetlab.analysis.load import Experiment, load_experiment
from forgetlab.analysis.procedure import ESTIMATES, LABELS, describe
from forgetlab.analysis.registry import REPORTED, SECONDARY
from forgetlab.analysis.stats import Comparison, GroupStat, Omnibus
from forgetlab.analysis.tables import Column, as_is, pair_columns
from forgetlab.atomic import atomic_write_json, atomic_write_text

ENV_KEYS = (
    "forgetlab",
    "python",
    "torch",
    "numpy",
    "platform",
    "cpu",
    "threads",
    "device",
    "gpu",
    "cuda",
)


def fmt(x: Any) -> str:
    """Numbers to 4 significant digits; None as an em dash-free 'n/a'."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return f"{x:.4g}"


def ci(pair: Any) -> str:
    return "n/a (n < 2)" if not pair else f"[{fmt(pair[0])}, {fmt(pair[1])}]"


HYPOTHESIS_COLUMNS: list[Column[RegisteredHypothesis]] = [
    Column("id", lambda hypothesis: hypothesis.id),
    Column("statement", lambda hypothesis: hypothesis.statement),
    Column("pass criterion", lambda hypothesis: f"`{hypothesis.criterion}`"),
]


PREREG_STATUS = {
    "unchanged": "unchanged since registration",
    "changed": "CHANGED after registration",
    "added": "ADDED after the first run (not registered)",
}


def prereg_block(doc: Doc, prereg: Preregistration) -> None:
    """The pre-registration's fields and status, with a warning when it changed or came late."""
    if prereg.status == "absent":
        doc.p("No pre-registration block: every test in this report is exploratory.")
        return
    if prereg.status == "added":
        doc.warn(
            "the pre-registration block was ADDED after the first run started (no block was "
            f"registered then; its hash now `{prereg.sha256_now}`). It registers nothing: treat "
            "the tests as exploratory."
        )
    elif prereg.changed:
        doc.warn(
            f"the pre-registration block CHANGED after the first run started: hash at registration "
            f"`{prereg.sha256}`, now `{prereg.sha256_now}`. Treat the tests as exploratory."
        )
    block = prereg.block or {}
    doc.table(
        pair_columns("field"),
        [
            ("primary metric", f"`{block.get('primary_metric')}`"),
            ("test", block.get("test")),
            ("alpha", block.get("alpha")),
            ("correction", block.get("correction")),
            ("sha256 (at the first run)", f"`{prereg.sha256}`" if prereg.sha256 else "none"),
            ("registered at", prereg.registered_at),
            ("status", PREREG_STATUS[prereg.status]),
        ],
    )


FACTOR_COLUMNS: list[Column[tuple[str, list[str]]]] = [
    Column("factor", lambda factor: factor[0]),
    Column("levels", lambda factor: ", ".join(factor[1])),
    Column("coding", lambda factor: "-1 / +1" if len(factor[1]) == 2 else "levels"),
]
GROUP_COLUMNS: list[Column[GroupRow]] = [
    Column("group", lambda group: group.group),
    Column("levels", lambda group: ", ".join(f"{k}={v}" for k, v in group.levels.items()) or "-"),
    Column("finished / planned", lambda group: f"{group.n_finished} / {group.n_planned}"),
    Column("seeds", lambda group: group.seeds),
    Column("orders", lambda group: "; ".join(group.orders)),
]


TIME_COLUMNS: list[Column[ExperimentInfo]] = [
    Column("started", lambda info: info.started),
    Column("finished", lambda info: info.finished),
    Column("duration", lambda info: _duration(info)),
]
RUN_COLUMNS: list[Column[RunRow]] = [
    Column("run", lambda run: run.run_id),
    Column("group", lambda run: run.group),
    Column("seed", lambda run: run.seed),
    Column("order", lambda run: run.order),
    Column("budget", lambda run: run.budget),
    Column("status", lambda run: run.status),
    Column("error", lambda run: run.error.splitlines()[0][:120] if run.error else ""),
]


def _duration(info: ExperimentInfo) -> str:
    try:
        elapsed = datetime.fromisoformat(info.finished) - datetime.fromisoformat(info.started)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return str(elapsed).split(".")[0]


def _mean_sd(stat: GroupStat | None) -> str:
    return "n/a" if not stat or stat.mean is None else f"{fmt(stat.mean)} ± {fmt(stat.sd)}"


def _diff(comparison: Comparison | None) -> str:
    if not comparison or comparison.diff is None:
        return "n/a"
    rel = "" if comparison.rel is None else f" ({100 * comparison.rel:+.1f}%)"
    return f"{fmt(comparison.diff)}{rel}"


INTERVAL_COLUMNS: list[Column[GroupStat]] = [
    Column("group", lambda stat: stat.group),
    Column("n", lambda stat: stat.n),
    Column("mean", lambda stat: stat.mean, fmt),
    Column("sd", lambda stat: stat.sd, fmt),
    Column("95% t CI", lambda stat: stat.t_ci, ci),
    Column("95% bootstrap CI", lambda stat: stat.boot_ci, ci),
    Column("seed variance", lambda stat: stat.seed_var, fmt),
    Column("order variance", lambda stat: stat.order_var, fmt),
]


def reported_metrics(result: BudgetAnalysis, analysis: Analysis) -> list[str]:
    """The primary metric, the declared co-primary and secondary ones, then the registry's
    reported metrics: those the budget's runs have, each once."""
    settings = analysis.settings
    present = {stat.metric for stat in result.group_stats}
    declared = [*settings.co_primary, *settings.secondary]
    return list(dict.fromkeys(m for m in (settings.primary, *declared, *REPORTED) if m in present))


def term_columns(fit: FactorialResult) -> list[Column[EffectTerm]]:
    """The factorial terms' table (intervals only where the fit could be tested)."""
    return [
        Column("term", lambda term: term.term),
        Column("effect", lambda term: term.estimate, fmt),
        Column("95% CI", lambda term: ci(term.ci) if fit.testable else "n/a"),
        Column("F", lambda term: term.F, fmt),
        Column("p (raw)", lambda term: term.p, fmt),
        Column(f"p ({fit.correction})", lambda term: term.p_corrected, fmt),
        Column("partial η²", lambda term: term.partial_eta_sq, fmt),
    ]


SECONDARY_COLUMNS: list[Column[tuple[str, FactorialResult, EffectTerm]]] = [
    Column("metric", lambda row: f"`{row[0]}`"),
    Column("term", lambda row: row[2].term),
    Column("effect", lambda row: row[2].estimate, fmt),
    Column("95% CI", lambda row: ci(row[2].ci) if row[1].testable else "n/a"),
    Column("p (corrected)", lambda row: row[2].p_corrected, fmt),
]


GAIN_COLUMNS: list[Column[GainPoint]] = [
    Column("factor", lambda point: point.factor),
    Column("level", lambda point: point.level),
    Column("n", lambda point: point.n),
    Column("mean", lambda point: point.value, fmt),
    Column("training FLOPs", lambda point: point.flops, fmt),
    Column("gain", lambda point: point.gain, fmt),
    Column("extra FLOPs", lambda point: point.extra_flops, fmt),
    Column("gain / extra FLOP", lambda point: point.marginal_gain_per_flop, fmt),
]
PERFORMANCE_COLUMNS: list[Column[GroupPerformance]] = [
    Column("group", lambda perf: perf.group),
    *[Column(f"{phase} s", lambda perf, phase=phase: perf.phase_s[phase], fmt) for phase in PHASES],
    Column("tokens/s", lambda perf: perf.tokens_per_s, fmt),
    Column("MFU", lambda perf: perf.mfu, fmt),
    Column(
        "peak RSS MiB",
        lambda perf: perf.peak_rss_bytes / 2**20 if perf.peak_rss_bytes else None,
        fmt,
    ),
    Column("params", lambda perf: perf.params_total, fmt),
    Column("trainable", lambda perf: perf.params_trainable, fmt),
]


VERDICT_COLUMNS: list[Column[Verdict]] = [
    Column("id", lambda verdict: verdict.id),
    Column("criterion", lambda verdict: f"`{verdict.criterion}`"),
    Column("verdict", lambda verdict: verdict.label),
    Column(
        "evidence (group means)",
        lambda verdict: "; ".join(f"{name} = {fmt(x)}" for name, x in verdict.evidence.items()),
    ),
    Column(
        "bootstrap support",
        lambda verdict: "n/a" if verdict.support is None else f"{100 * verdict.support:.0f}%",
    ),
    Column("note", lambda verdict: verdict.note or ""),
]


@dataclass(frozen=True)
class Budget:
    """One budget's analysis with the finished runs it was computed from."""

    name: str
    result: BudgetAnalysis
    frame: pd.DataFrame
    tag: str  # prefix of its plot files ("" when the study has one budget)
    where: str  # " (budget `x`)" in headings when the study has several budgets, else ""


@dataclass
class ReportContext:
    """What every section reads: the study on disk, its typed analysis, where plots go, and the
    plots already drawn (the plots section draws them; later sections may refer to them)."""

    exp: Experiment
    analysis: Analysis
    figs: Path

    @property
    def primary(self) -> str:
        return self.analysis.settings.primary

    def budgets(self) -> Iterator[Budget]:
        finished = self.exp.finished()
        several = len(self.analysis.budgets) > 1
        for name, result in self.analysis.budgets.items():
            yield Budget(
                name,
                result,
                finished[finished["budget"] == name],
                f"{name}-" if several else "",
                f" (budget `{name}`)" if several else "",
            )


Section = Callable[[Doc, ReportContext], None]


# ---- the answer -------------------------------------------------------------------------------


def section_header(doc: Doc, ctx: ReportContext) -> None:
    """What was run, in one paragraph, and what the reader must know before trusting it."""
    info, settings = ctx.analysis.experiment, ctx.analysis.settings
    counts = ", ".join(f"{n} {status}" for status, n in ctx.analysis.status_counts.items())
    better = "lower" if settings.primary_lower_is_better else "higher"
    factors = f" over {', '.join(info.factors)}" if info.factors else ""
    doc.p(
        f"Design `{info.design}`{factors}, scale `{info.scale}`, {len(ctx.analysis.runs)} runs "
        f"({counts}); primary metric `{settings.primary}` ({better} is better); reference group "
        f"`{info.reference}`. Written {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}."
    )
    prereg = ctx.analysis.preregistration
    if prereg.changed:
        doc.warn(
            f"the pre-registration was {prereg.status.upper()} after the first run started: every "
            "test below is exploratory (see Pre-registration)."
        )
    stopped = [r for r in ctx.analysis.runs if r.status in ("failed", "corrupt")]
    if stopped:
        doc.warn(
            f"{len(stopped)} run(s) failed or are corrupt and are left out of every statistic "
            "(see Execution)."
        )
    if not ctx.analysis.budgets:
        doc.warn("no finished run: nothing to analyse yet.")


def verdict_n(verdict: Verdict, result: BudgetAnalysis) -> str:
    """The finished runs behind a verdict: per group it reads, or all runs when it reads only
    the factorial terms (which are fitted on every run of the budget)."""
    sizes = {identifier(g.group): (g.group, g.n_finished) for g in result.groups}
    read = [
        sizes[member]
        for family, member in referenced(verdict.criterion)
        if family not in (*TEST_FAMILIES, "effect") and member in sizes
    ]
    if not read:
        return f"{result.n_finished} runs"
    counts = dict(read)
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} per group"
    return ", ".join(f"{g}: {n}" for g, n in counts.items())


def answer_verdict_columns(result: BudgetAnalysis) -> list[Column[Verdict]]:
    return [
        Column("id", lambda verdict: verdict.id),
        Column("statement", lambda verdict: verdict.statement),
        Column("verdict", lambda verdict: verdict.label),
        Column("n", lambda verdict: verdict_n(verdict, result)),
    ]


def answer_primary_columns(
    result: BudgetAnalysis, reference: str | None, settings: Settings
) -> list[Column[GroupStat]]:
    """Per group: n, mean, 95% t interval, and (with a reference) the difference to it, its
    interval where the pairwise test gives one, that test's p and the adjusted p that decides
    (corrected across the groups, gated by the omnibus test where there is one)."""
    pairwise = settings.pairwise_test
    columns: list[Column[GroupStat]] = [
        Column("group", lambda stat: stat.group),
        Column("n", lambda stat: stat.n),
        Column("mean", lambda stat: stat.mean, fmt),
        Column("95% CI", lambda stat: stat.t_ci, ci),
    ]
    if reference and result.reference_comparison:

        def versus(stat: GroupStat) -> Comparison | None:
            return result.comparison(stat.group, stat.metric)

        delta = "Δ" if pairwise != "mann_whitney" else "Δ (Hodges-Lehmann)"
        columns.append(
            Column(
                f"{delta} vs `{reference}`",
                lambda stat: _diff(versus(stat)) if versus(stat) else "reference",
            )
        )
        if pairwise == "welch_t":  # the only pairwise test that gives an interval
            columns.append(
                Column("95% CI of Δ", lambda stat: ci(found.ci) if (found := versus(stat)) else "")
            )
        gated = ", gated" if settings.omnibus_test else ""
        columns += [
            Column(
                f"p ({LABELS[pairwise]})",
                lambda stat: fmt(found.p) if (found := versus(stat)) else "",
            ),
            Column(
                f"p ({settings.correction}{gated})",
                lambda stat: fmt(found.p_adjusted) if (found := versus(stat)) else "",
            ),
        ]
    return columns


def answer_term_columns(fit: FactorialResult) -> list[Column[EffectTerm]]:
    return [
        Column("term", lambda term: term.term),
        Column("effect", lambda term: term.estimate, fmt),
        Column("95% CI", lambda term: ci(term.ci) if fit.testable else "n/a"),
        Column(f"p ({fit.correction})", lambda term: term.p_corrected, fmt),
    ]


def section_answer(doc: Doc, ctx: ReportContext) -> None:
    """The question and its answer: verdicts with their n, the primary metric per group with
    intervals and differences to the reference, the effects, and the conclusions."""
    if not ctx.analysis.budgets:
        return
    doc.h(2, "Answer")
    goal = _goal(ctx.exp)
    if goal:
        doc.p(f"**Question:** {goal}")
    primary, reference = ctx.primary, ctx.analysis.experiment.reference
    for b in ctx.budgets():
        if b.where:
            doc.h(3, f"Budget `{b.name}`")
        result = b.result
        if result.hypotheses:
            doc.p(f"**Hypotheses**{b.where}:")
            doc.table(answer_verdict_columns(result), result.hypotheses)
        settings = ctx.analysis.settings
        gate = (
            f", and no smaller than the {LABELS[settings.omnibus_test]} p across the groups"
            if settings.omnibus_test
            else ""
        )
        against = (
            f"; p: {LABELS[settings.pairwise_test]} test against `{reference}`, then corrected "
            f"across the groups with `{settings.correction}`{gate}"
            if reference and result.reference_comparison
            else ""
        )
        doc.p(
            f"**`{primary}` per group**{b.where} (mean over finished runs, 95% t interval"
            f"{against}):"
        )
        doc.table(
            answer_primary_columns(result, reference, settings),
            [s for g in result.finished_groups if (s := result.stat(g, primary))],
        )
        gate = result.omnibus_on(primary)
        if gate is not None:
            doc.p(omnibus_text(gate))
        fit = result.factorial.get(primary)
        if fit and fit.factors:
            doc.p(f"**Effects on `{primary}`**{b.where} (mean(+1) − mean(−1)):")
            if not fit.testable:
                doc.p(f"No significance test: {fit.reason}.")
            doc.table(answer_term_columns(fit), fit.terms)
        doc.p(f"**Conclusions**{b.where}:")
        statements = result.conclusions.statements
        doc.bullets(statements or ["No conclusion can be drawn from these runs."])


def omnibus_text(gate: Omnibus) -> str:
    """The omnibus test across the groups in one sentence."""
    stat = {"anova": "F", "kruskal": "H"}.get(gate.test, "statistic")
    if gate.p is None:
        return (
            f"{LABELS[gate.test]} across the groups on `{gate.metric}`: not computed (fewer than "
            "two groups with two runs, or no variation)."
        )
    return (
        f"{LABELS[gate.test]} across the groups ({', '.join(gate.groups)}) on `{gate.metric}`: "
        f"{stat} = {fmt(gate.statistic)}, p = {fmt(gate.p)}."
    )


def _share(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


GAP_COLUMNS: list[Column[Placement]] = [
    Column("group", lambda p: p.group),
    Column("final mean loss", lambda p: p.value, fmt),
    Column("share of the naive-to-joint gap closed", lambda p: p.share, _share),
]


def joint_bounds_block(doc: Doc, bounds: Bounds, where: str = "") -> None:
    """Each group between naive fine-tuning and one joint group (:mod:`forgetlab.analysis.joint`)."""
    doc.h(3, f"Between naive fine-tuning and joint training (`{bounds.joint_group}`){where}")
    doc.p(
        f"Each group's `{bounds.metric}` (mean over its finished runs) and the share of the gap "
        f"from naive fine-tuning (the reference group `{bounds.naive_group}`, "
        f"{fmt(bounds.naive)}) to joint training on every domain at once "
        f"(`{bounds.joint_group}`, {fmt(bounds.joint)}) that it closes: "
        "(L_naive − L_group) / (L_naive − L_joint); 0% = naive, 100% = joint training."
    )
    if bounds.note:
        doc.warn(bounds.note)
    doc.table(GAP_COLUMNS, bounds.placements)


def section_joint_bounds(doc: Doc, ctx: ReportContext) -> None:
    """Where the study has a joint-training group: every group placed between naive fine-tuning
    and joint training, per budget."""
    for b in ctx.budgets():
        for bounds in b.result.joint_bounds:
            joint_bounds_block(doc, bounds, b.where)


def _goal(exp: Experiment) -> str | None:
    spec = exp.meta.get("spec") or {}
    goal = spec.get("goal") or spec.get("description") or spec.get("question")
    return str(goal) if goal else None


def unigram_floor_block(doc: Doc, exp: Experiment) -> None:
    """Warn in words, per group, about each domain whose just-learned loss is not clearly below its
    unigram baseline (:mod:`forgetlab.analysis.floor`): its forgetting is then mostly the word
    frequency prior moving, not the loss of anything learned."""
    finished = exp.finished()
    judged = [rid for rid in finished["run_id"] if (exp.records.get(rid) or {}).get("unigram")]
    if not judged:
        return
    doc.h(2, "Learned beyond word frequencies?")
    found: dict[tuple[str, str], list[Shortfall]] = {}
    runs_of: dict[str, int] = {}
    for rid, group in zip(finished["run_id"], finished["group"], strict=True):
        if rid not in judged:
            continue
        runs_of[group] = runs_of.get(group, 0) + 1
        for s in shortfalls(exp.records[rid]):
            found.setdefault((group, s.domain), []).append(s)
    if not found:
        doc.p(
            f"In every finished run each domain's loss right after its own stage is at least "
            f"{UNIGRAM_MARGIN:.1f} nats below that domain's unigram baseline."
        )
        return
    doc.warn(
        f"Some just-learned losses are less than {UNIGRAM_MARGIN:.1f} nats below their domain's "
        "unigram baseline: there the runs learned little beyond word frequencies, and the "
        "forgetting measured on that domain is largely the frequency prior moving to the next one."
    )
    items = []
    for (group, domain), ss in found.items():
        if runs_of[group] == 1:
            items.append(f"`{group}`: {ss[0].sentence()}")
            continue
        margins = sorted(s.margin for s in ss)
        items.append(
            f"`{group}`: {domain} in {len(ss)} of {runs_of[group]} runs (unigram minus "
            f"just-learned loss {margins[0]:.2f} to {margins[-1]:.2f} nats)"
        )
    doc.bullets(items)


def section_unigram_floor(doc: Doc, ctx: ReportContext) -> None:
    unigram_floor_block(doc, ctx.exp)


def section_plots(doc: Doc, ctx: ReportContext) -> None:
    """Every figure, right after the answer: the primary metric and effects first, then the
    curves and R matrices, then the interactions, gains and costs."""
    if not ctx.analysis.budgets:
        return
    doc.h(2, "Plots")
    primary, exp, figs = ctx.primary, ctx.exp, ctx.figs
    for b in ctx.budgets():
        if b.where:
            doc.h(3, f"Budget `{b.name}`")
        result, tag = b.result, b.tag
        doc.image(
            plots.plot_group_metric(result.group_stats, primary, figs, f"{tag}primary"),
            f"{primary} per group, 95% t intervals",
        )
        fit = result.factorial.get(primary)
        if fit and fit.factors:
            doc.image(
                plots.plot_effects(fit, figs, f"{tag}effects"),
                f"Effect decomposition of {primary}: main effects and interactions, 95% intervals",
            )
        drawn = plots.plot_learning_curves(exp, b.frame, figs, f"{tag}learning_curves")
        if drawn:
            doc.image(
                drawn[0],
                f"Training loss per group (mean over runs; order {drawn[1]}); dashed: stage "
                "boundaries",
            )
        drawn = plots.plot_domain_curves(exp, b.frame, figs, f"{tag}domain_curves")
        if drawn:
            doc.image(
                drawn[0],
                f"Validation loss of each domain across the stream, per group (mean over runs; "
                f"order {drawn[1]}); shaded: the stage that trains the domain",
            )
        doc.image(
            plots.plot_r_heatmaps(exp, b.frame, figs, f"{tag}r_matrices"),
            "Mean loss R matrix per group (rows: before training and after each stage)",
        )
        if fit and fit.factors:
            doc.image(
                plots.plot_interactions(b.frame, exp.factors, primary, figs, f"{tag}interactions"),
                f"Interaction plots of {primary}",
            )
        if result.marginal_gains:
            doc.image(
                plots.plot_marginal_gains(result.marginal_gains, primary, figs, f"{tag}gains"),
                "Marginal-gain curves",
            )
        doc.image(
            plots.plot_performance(result.performance, figs, f"{tag}performance"),
            "Parameters, training speed and peak memory per group",
        )


# ---- the detail -------------------------------------------------------------------------------


def section_goal(doc: Doc, ctx: ReportContext) -> None:
    doc.h(2, "Goal and hypotheses")
    goal = _goal(ctx.exp)
    doc.p(goal if goal else "The spec states no goal (`goal` / `description`).")
    doc.table(HYPOTHESIS_COLUMNS, ctx.analysis.preregistration.hypotheses)


def section_prereg(doc: Doc, ctx: ReportContext) -> None:
    doc.h(2, "Pre-registration")
    prereg_block(doc, ctx.analysis.preregistration)
    settings = ctx.analysis.settings
    declared = "declared" if ctx.analysis.preregistration.status != "absent" else "default"
    doc.p(
        f"Test `{settings.test}` ({declared}) under design `{ctx.analysis.experiment.design}`: "
        f"{describe(settings.pairwise_test, settings.omnibus_test, settings.factorial)}; "
        f"p-values corrected with `{settings.correction}`, alpha {fmt(settings.alpha)}."
    )


def mechanism_knob_defaults() -> dict[str, dict[str, Any]]:
    """Each registered mechanism's knobs at their defaults (a spec lists only the knobs it sets;
    the comparison needs the value every run used)."""
    from forgetlab.mechanisms import MECHANISMS

    return {
        name: {
            key: f.get_default(call_default_factory=True)
            for key, f in cls.Knobs.model_fields.items()
            if not f.is_required()
        }
        for name, cls in MECHANISMS.items()
    }


def config_comparison(exp: Experiment) -> ConfigComparison:
    """The resolved configs of the study's runs compared across groups (every run with a
    readable record, finished or not: they were all configured)."""
    group_of = dict(zip(exp.results["run_id"], exp.results["group"].astype(str), strict=True))
    configs = {r: rec.get("config") or {} for r, rec in exp.records.items() if r in group_of}
    return compare_configs(configs, group_of, mechanism_knob_defaults())


def _by_section(shared: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Shared settings as one row per config section: ``key = value; ...``."""
    rows: dict[str, list[str]] = {}
    for key, value in shared:
        section, _, rest = key.partition(".")
        rows.setdefault(section if rest else "run", []).append(f"`{rest or key}` = {value}")
    return [(section, "; ".join(items)) for section, items in rows.items()]


def _key_summary(keys: list[str], every: set[str]) -> str:
    """Keys for a sentence: ``model.moe.*`` when these are all the knobs of a part (a key two
    levels deep or more; ``every`` holds all the keys), each key itself otherwise."""
    parts: list[str] = []
    for key in keys:
        head = key.rsplit(".", 1)[0]
        under = {k for k in every if k.startswith(f"{head}.")}
        whole = "." in head and len(under) > 1 and under <= set(keys)
        name = f"`{head}.*`" if whole else f"`{key}`"
        if name not in parts:
            parts.append(name)
    return ", ".join(parts)


def section_config(doc: Doc, ctx: ReportContext) -> None:
    """Factors, groups, the settings every run shares that matter, and every per-group
    difference; the full resolved configs are folded at the end of the report."""
    doc.h(2, "Configuration")
    doc.table(FACTOR_COLUMNS, ctx.analysis.experiment.factors.items())
    first = next(iter(ctx.analysis.budgets.values()), None)
    if first:
        doc.table(GROUP_COLUMNS, first.groups)
    if not ctx.exp.records:
        return
    comparison = config_comparison(ctx.exp)
    doc.h(3, "Shared settings")
    doc.table(
        pair_columns("section", "settings (the same in every run)"), _by_section(comparison.shared)
    )
    left_out = [
        (comparison.unused, "settings of parts no run uses"),
        (comparison.unset, "settings no run sets (null or empty: the default rule applies)"),
        (comparison.bookkeeping, "settings of where and how often runs write"),
    ]
    every = {k for keys, _ in left_out for k in keys} | {k for k, _ in comparison.shared}
    every |= {k for k, _ in comparison.differences} | set(comparison.per_run)
    doc.bullets(
        [
            f"Left out: {len(keys)} {what}: {_key_summary(keys, every)}."
            for keys, what in left_out
            if keys
        ]
    )
    if comparison.per_run:
        doc.p(
            "Vary between the runs of a group (see the groups table): "
            + ", ".join(f"`{k}`" for k in comparison.per_run)
            + "."
        )
    doc.h(3, "Per-group differences")
    if not comparison.differences:
        doc.p("None: every group runs the same configuration apart from its factor levels.")
        return
    doc.p('"unused": the group does not use the part this setting configures.')
    columns = [
        Column("setting", lambda difference: f"`{difference[0]}`"),
        *[Column(g, lambda difference, g=g: difference[1][g]) for g in comparison.groups],
    ]
    doc.table(columns, comparison.differences)


PROBE_COLUMN = "loss.probe_forgetting"


def section_probes(doc: Doc, exp: Experiment, frame: pd.DataFrame, result: BudgetAnalysis) -> None:
    """General ability (``data.probes``, never trained on): each group's probe loss after the
    stream minus before it, per probe and mean over the probes, and where the probes started."""
    prefix = f"{PROBE_COLUMN}@"
    probes = [c[len(prefix) :] for c in frame.columns if c.startswith(prefix)]
    if not probes:
        return

    def before(probe: str, group: str) -> str:
        """Mean over the group's runs of the probe's loss before the stream (R row 0)."""
        values = []
        for run_id in frame.loc[frame["group"] == group, "run_id"]:
            section = (exp.records.get(run_id) or {}).get("probes") or {}
            if probe in (section.get("domains") or []):
                values.append(section["R"]["loss"][0][section["domains"].index(probe)])
        return fmt(sum(values) / len(values)) if values else "n/a"

    def forgetting(metric: str, group: str) -> str:
        return _mean_sd(result.stat(group, metric))

    doc.h(3, "General ability: probe domains (never trained on)")
    doc.p(
        f"Loss on each probe ({', '.join(f'`{p}`' for p in probes)}) after the stream minus "
        f"before it, mean ± sd over finished runs; > 0 = knowledge the model had before the "
        f"stream was lost. `{PROBE_COLUMN}` is the mean over the probes (alias "
        "`probe_forgetting.<group>`); *before* is the probe's loss at row 0."
    )
    doc.table(
        [
            Column("group", as_is),
            Column(f"`{PROBE_COLUMN}`", partial(forgetting, PROBE_COLUMN)),
            *[
                column
                for p in probes
                for column in (
                    Column(f"`{p}` before", partial(before, p)),
                    Column(f"`{p}` forgetting", partial(forgetting, f"{prefix}{p}")),
                )
            ],
        ],
        result.finished_groups,
    )


BASE_MODEL_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("key", lambda b: f"`{b['key']}`"),
    Column("pretrained on", lambda b: b.get("data") or ", ".join(b["domains"])),
    Column("steps", lambda b: b["steps"]),
    Column("tokens", lambda b: f"{b['train_tokens']:,}"),
    Column("seed", lambda b: b["seed"]),
    Column("weights sha256", lambda b: f"`{(b.get('sha256') or '?')[:12]}`"),
    Column("stored at", lambda b: f"`{b['path']}`"),
]


def base_models_block(doc: Doc, exp: Experiment) -> None:
    """The bases the runs started from (``[base_model]``): what each was pretrained on, for how
    long, and which weights, so that row 0 of every R matrix can be traced to them."""
    bases = exp.meta.get("base_models") or []
    if not bases:
        return
    doc.h(3, "Base model" if len(bases) == 1 else "Base models")
    doc.p(
        "Every run starts from its base, pretrained once before the runs and shared: row 0 of "
        "each R matrix scores the base, not a random model."
    )
    doc.table(BASE_MODEL_COLUMNS, bases)


def section_base_models(doc: Doc, ctx: ReportContext) -> None:
    base_models_block(doc, ctx.exp)


def section_results_detail(doc: Doc, ctx: ReportContext) -> None:
    """Per budget: every reported metric, intervals and stability, comparisons to the reference,
    the full effect tables, marginal gains, costs and the evidence of every verdict."""
    for b in ctx.budgets():
        doc.h(2, f"Results in detail{b.where}")
        metrics_detail(doc, ctx, b.result)
        section_probes(doc, ctx.exp, b.frame, b.result)
        effects_detail(doc, ctx, b.result)
        costs_detail(doc, b.result)
        if b.result.hypotheses:
            doc.h(3, "Hypothesis verdicts and their evidence")
            doc.table(VERDICT_COLUMNS, b.result.hypotheses)


def metrics_detail(doc: Doc, ctx: ReportContext, result: BudgetAnalysis) -> None:
    primary = ctx.primary
    metrics = reported_metrics(result, ctx.analysis)
    groups = result.finished_groups

    def n_runs(group: str) -> int:
        stat = result.stat(group, primary)
        return stat.n if stat else 0

    def mean_sd(metric: str, group: str) -> str:
        return _mean_sd(result.stat(group, metric))

    def difference(metric: str, group: str) -> str:
        return _diff(result.comparison(group, metric))

    doc.h(3, "Metrics per group (mean ± sd over finished runs)")
    doc.table(
        [
            Column("group", as_is),
            Column("n", n_runs),
            *[Column(f"`{m}`", partial(mean_sd, m)) for m in metrics],
        ],
        groups,
        key_columns=2,
    )
    doc.h(3, f"Primary metric `{primary}`: intervals and stability")
    doc.table(INTERVAL_COLUMNS, [s for g in groups if (s := result.stat(g, primary))])
    if result.reference_comparison:
        pairwise = ctx.analysis.settings.pairwise_test
        doc.h(
            3,
            f"Against the reference group `{ctx.analysis.experiment.reference}` "
            f"({ESTIMATES[pairwise]}, relative)",
        )
        doc.table(
            [Column("group", as_is), *[Column(f"`{m}`", partial(difference, m)) for m in metrics]],
            [g for g in groups if any(result.comparison(g, m) for m in metrics)],
        )


def effects_detail(doc: Doc, ctx: ReportContext, result: BudgetAnalysis) -> None:
    fit = result.factorial.get(ctx.primary)
    if fit and fit.factors:
        doc.h(3, f"Factorial effects on `{ctx.primary}` (pre-registered test)")
        doc.p(
            "Effect = mean(+1) − mean(−1) = 2 × OLS coefficient under ±1 effect coding; model with "
            f"all interactions{', order as a block' if fit.blocked else ''}; type III ANOVA; "
            f"p corrected with `{fit.correction}` across the factorial terms."
        )
        if not fit.testable:
            doc.warn(
                f"no significance test: {fit.reason}. Estimates only, without intervals or "
                "p-values."
            )
        doc.table(term_columns(fit), fit.terms)
        if fit.block:
            block = fit.block
            doc.p(
                f"Order block: F = {fmt(block.F)}, p = {fmt(block.p)}, partial η² = "
                f"{fmt(block.partial_eta_sq)}."
            )
    secondary = [
        (metric, fit_m, term)
        for metric in SECONDARY
        if (fit_m := result.factorial.get(metric))
        for term in fit_m.terms
    ]
    if secondary:
        doc.h(3, "Secondary metrics (exploratory, corrected within each metric)")
        doc.table(SECONDARY_COLUMNS, secondary)


def costs_detail(doc: Doc, result: BudgetAnalysis) -> None:
    if result.marginal_gains:
        doc.h(3, "Marginal gains (primary metric against extra training FLOPs)")
        doc.table(
            GAIN_COLUMNS, [point for curve in result.marginal_gains.values() for point in curve]
        )
    doc.h(3, "Timing, memory and parameters (means per group)")
    doc.table(PERFORMANCE_COLUMNS, result.performance)


def section_execution(doc: Doc, ctx: ReportContext) -> None:
    analysis = ctx.analysis
    doc.h(2, "Execution")
    doc.table(TIME_COLUMNS, [analysis.experiment])
    doc.table(RUN_COLUMNS, analysis.runs)
    stopped = [run for run in analysis.runs if run.status in ("failed", "corrupt")]
    if stopped:
        doc.h(3, "Failed and corrupt runs (left out of every statistic)")
        doc.bullets(
            [
                f"`{run.run_id}` ({run.group}, seed {run.seed}): **{run.status}**: "
                f"{(run.error or 'no error recorded').splitlines()[0]}"
                for run in stopped
            ]
        )


def section_environment(doc: Doc, ctx: ReportContext) -> None:
    exp = ctx.exp
    doc.h(2, "Environment")
    env = exp.meta.get("env") or next(
        (r.get("env") for r in exp.records.values() if r.get("env")), {}
    )
    git = env.get("git") or {}
    items = [(k, env.get(k)) for k in ENV_KEYS if env.get(k) is not None]
    items += [("git commit", f"`{git.get('commit')}`"), ("tree dirty", git.get("dirty"))]
    for pkg in ("scipy", "statsmodels", "pandas", "matplotlib"):
        try:
            items.append((f"{pkg} (report)", metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            continue
    doc.table(pair_columns("item"), items)
    if git.get("dirty"):
        doc.warn("the working tree was dirty: the commit alone does not reproduce these runs.")
    doc.h(2, "Command lines")
    cmds = [shlex.join(map(str, c)) for c in exp.meta.get("commands") or []]
    doc.code("\n".join(cmds) if cmds else "(no command recorded)")


def section_samples(doc: Doc, ctx: ReportContext) -> None:
    exp = ctx.exp
    first = exp.results.drop_duplicates("group")["run_id"]
    samples = [
        (r, exp.records[r]["samples"]) for r in first if exp.records.get(r, {}).get("samples")
    ]
    if not samples:
        return
    doc.h(2, "Generation samples")
    for rid, items in samples:
        doc.h(3, f"run `{rid}` (first run of its group)")
        doc.code("\n\n".join(_sample_text(s) for s in items[:3]))


def _sample_text(s: Any) -> str:
    if isinstance(s, dict):
        return f"prompt: {s.get('prompt', '')}\noutput: {s.get('completion', s.get('output', ''))}"
    return str(s)


ALIAS_COLUMNS: list[Column[tuple[str, tuple[str, Any, str]]]] = [
    Column("alias", lambda item: f"`{item[0]}`"),
    Column("column", lambda item: f"`{item[1][0]}`"),
    Column("meaning", lambda item: item[1][2]),
]


def section_definitions(doc: Doc, ctx: ReportContext) -> None:
    doc.h(2, "Definitions")
    doc.bullets(
        [
            "Scores are higher-is-better (accuracy, negated loss); forgetting is positive when performance dropped.",
            "Effect coding: a factor's first listed level is −1, the second +1; reported effect = mean(+1) − mean(−1) = 2β.",
            "Super-additive interaction: significant with a benefit (sign-adjusted so positive = better) above zero: "
            "the factors together beat the sum of their single effects; sub-additive: below zero.",
            "Minimal mechanism set: fewest factors 'on' whose combination is not significantly worse than the best "
            f"({LABELS[ctx.analysis.settings.pairwise_test]} tests against the best, corrected).",
            "Seed variance: pooled within-order variance over seeds; order variance: variance of per-order means.",
        ]
    )
    doc.h(3, "Hypothesis namespace")
    doc.p(
        "Criteria are expressions over `<alias>.<group>` (group mean), e.g. `abs(ppl.C - ppl.B) / ppl.B < 0.05`; "
        "every results column is also an alias with `.`/`@` replaced by `_`; `effect.T`, `effect_lo.T`, "
        "`effect_hi.T`, `p.T` give the primary metric's factorial terms (`T:W` → `T_W`); in a group design "
        "`effect.G`, `effect_lo.G`, `effect_hi.G`, `p.G` give group G against the reference by the "
        "pre-registered test (its difference, interval where the test has one, adjusted p). Allowed: "
        "numbers, arithmetic, comparisons, and/or/not, abs/min/max."
    )
    doc.table(ALIAS_COLUMNS, ALIASES.items())


def section_config_appendix(doc: Doc, ctx: ReportContext) -> None:
    """The full resolved configuration of each group's first run, folded (HTML ``<details>``)."""
    firsts = ctx.exp.results.drop_duplicates("group")
    shown = [
        (str(g), r)
        for g, r in zip(firsts["group"], firsts["run_id"], strict=True)
        if (ctx.exp.records.get(r) or {}).get("config")
    ]
    if not shown:
        return
    doc.h(2, "Appendix: full resolved configuration")
    doc.p(
        "Each group's first run, as the run resolved it (other runs of a group differ only in "
        "the settings listed under Configuration)."
    )
    for group, rid in shown:
        with doc.details(f"{group}: run {rid}"):
            doc.code(json.dumps(ctx.exp.records[rid]["config"], indent=2))


SECTIONS: tuple[Section, ...] = (
    section_header,
    section_answer,
    section_joint_bounds,
    section_unigram_floor,
    section_plots,
    section_goal,
    section_prereg,
    section_config,
    section_base_models,
    section_results_detail,
    section_execution,
    section_environment,
    section_samples,
    section_definitions,
    section_config_appendix,
)
"""The report's sections in order: the answer, the plots, then the detail."""


def build(exp: Experiment, analysis: Analysis, figs: Path) -> Doc:
    """The report document (plots are drawn into ``figs`` as it is built)."""
    doc = Doc(f"Study record: {exp.name}")
    ctx = ReportContext(exp, analysis, figs)
    for section in SECTIONS:
        section(doc, ctx)
    return doc


def write_report(exp_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Analyse EXP_DIR and write analysis.json, report.md, report.html and plots/ into it."""
    exp = load_experiment(exp_dir)
    document = to_json(analyse(exp, seed=seed))
    # the report is rendered from what analysis.json holds (NaN as None, tuples as lists), read
    # back through the same loader as any other reader of the file
    analysis = from_json(document)
    figs = exp.root / "plots"
    doc = build(exp, analysis, figs)
    paths = {
        "analysis": exp.root / ANALYSIS_JSON,
        "markdown": exp.root / "report.md",
        "html": exp.root / "report.html",
        "plots": figs,
    }
    atomic_write_json(paths["analysis"], document)
    atomic_write_text(paths["markdown"], doc.markdown(exp.root))
    atomic_write_text(paths["html"], doc.html())
    return paths
