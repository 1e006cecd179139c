"""The experiment record (docs/memory_ffn.md): analysis.json, report.md, report.html, plots/.

Sections, in order: summary; goal and hypotheses; pre-registration (hash, change flag); configuration
(factors, groups, shared config, per-group differences); environment and git state; command lines;
execution (times, per-run status); per budget: metrics, intervals, stability, comparison against the
reference, effects, marginal gains, timing/memory/parameters, plots; generation samples; hypothesis
verdicts; conclusions; definitions. Every number comes from :func:`analyse`; nothing is hand-written.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from forgetlab.analysis import plots
from forgetlab.analysis.analyse import analyse
from forgetlab.analysis.columns import PHASES
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
    from_json,
    to_json,
)
from forgetlab.analysis.effects import EffectTerm, FactorialResult
from forgetlab.analysis.floor import UNIGRAM_MARGIN, Shortfall, shortfalls
from forgetlab.analysis.gains import GainPoint
from forgetlab.analysis.hypotheses import ALIASES, Verdict
from forgetlab.analysis.load import Experiment, load_experiment
from forgetlab.analysis.registry import REPORTED, SECONDARY
from forgetlab.analysis.stats import Comparison, GroupStat
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


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d) if isinstance(d, list) else str(d)}


HYPOTHESIS_COLUMNS: list[Column[RegisteredHypothesis]] = [
    Column("id", lambda hypothesis: hypothesis.id),
    Column("statement", lambda hypothesis: hypothesis.statement),
    Column("pass criterion", lambda hypothesis: f"`{hypothesis.criterion}`"),
]


def section_header(doc: Doc, exp: Experiment, analysis: Analysis) -> None:
    info, settings = analysis.experiment, analysis.settings
    counts = ", ".join(f"{n} {status}" for status, n in analysis.status_counts.items())
    better = "lower" if settings.primary_lower_is_better else "higher"
    doc.p(
        f"Design `{info.design}`, scale `{info.scale}`, {len(analysis.runs)} runs ({counts}); "
        f"primary metric `{settings.primary}` ({better} "
        f"is better); reference group `{info.reference}`. Written {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}."
    )
    spec = exp.meta.get("spec") or {}
    doc.h(2, "Goal and hypotheses")
    goal = spec.get("goal") or spec.get("description") or spec.get("question")
    doc.p(str(goal) if goal else "The spec states no goal (`goal` / `description`).")
    doc.table(HYPOTHESIS_COLUMNS, analysis.preregistration.hypotheses)


def section_glance(doc: Doc, analysis: Analysis) -> None:
    """The verdicts first (details and evidence follow in each budget's section)."""
    lines = []
    for budget, result in analysis.budgets.items():
        where = f" [{budget}]" if len(analysis.budgets) > 1 else ""
        lines += [
            f"{verdict.id}{where}: **{verdict.label}**: {verdict.statement}"
            for verdict in result.hypotheses
        ]
        found = result.conclusions.minimal_set
        if found and found.on is not None:
            lines.append(f"Minimal mechanism set{where}: {', '.join(found.on) or 'none'}")
    if lines:
        doc.h(2, "At a glance")
        doc.bullets(lines)


PREREG_STATUS = {
    "unchanged": "unchanged since registration",
    "changed": "CHANGED after registration",
    "added": "ADDED after the first run (not registered)",
}


def section_prereg(doc: Doc, prereg: Preregistration) -> None:
    doc.h(2, "Pre-registration")
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


def section_config(doc: Doc, exp: Experiment, analysis: Analysis) -> None:
    doc.h(2, "Configuration")
    doc.table(FACTOR_COLUMNS, analysis.experiment.factors.items())
    first = next(iter(analysis.budgets.values()), None)
    if first:
        doc.table(GROUP_COLUMNS, first.groups)
    configs = {run_id: _flatten(rec.get("config") or {}) for run_id, rec in exp.records.items()}
    if not configs:
        return
    keys = sorted(set().union(*configs.values()))
    shared = [k for k in keys if len({c.get(k) for c in configs.values()}) == 1]
    varying = [k for k in keys if k not in shared and not k.endswith(("name", "seed"))]
    doc.h(3, "Shared run configuration")
    any_config = next(iter(configs.values()))
    doc.table(pair_columns("key"), [(k, any_config.get(k)) for k in shared])
    group_of = dict(zip(exp.results["run_id"], exp.results["group"], strict=True))
    groups = list(dict.fromkeys(group_of[r] for r in configs if r in group_of))
    if varying and groups:
        doc.h(3, "Per-group differences")

        def values_in(group: str, key: str) -> str:
            values = {configs[r].get(key) for r in configs if group_of.get(r) == group}
            return ", ".join(sorted(str(x) for x in values))

        columns = [Column("key", as_is), *[Column(g, partial(values_in, g)) for g in groups]]
        doc.table(columns, varying)


BASE_MODEL_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("key", lambda b: f"`{b['key']}`"),
    Column("pretrained on", lambda b: ", ".join(b["domains"])),
    Column("steps", lambda b: b["steps"]),
    Column("tokens", lambda b: f"{b['train_tokens']:,}"),
    Column("seed", lambda b: b["seed"]),
    Column("weights sha256", lambda b: f"`{(b.get('sha256') or '?')[:12]}`"),
    Column("stored at", lambda b: f"`{b['path']}`"),
]


def section_base_models(doc: Doc, exp: Experiment) -> None:
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


def section_environment(doc: Doc, exp: Experiment) -> None:
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


def section_execution(doc: Doc, analysis: Analysis) -> None:
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


def section_unigram_floor(doc: Doc, exp: Experiment) -> None:
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
    return list(dict.fromkeys(
        m for m in (settings.primary, *declared, *REPORTED) if m in present
    ))


def section_results(
    doc: Doc, result: BudgetAnalysis, analysis: Analysis, figs: Path, tag: str
) -> None:
    primary = analysis.settings.primary
    metrics = reported_metrics(result, analysis)
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
    )
    doc.h(3, f"Primary metric `{primary}`: intervals and stability")
    doc.table(
        INTERVAL_COLUMNS, [stat for group in groups if (stat := result.stat(group, primary))]
    )
    doc.image(
        plots.plot_group_metric(result.group_stats, primary, figs, f"{tag}primary"),
        f"{primary} per group, 95% t intervals",
    )
    if not result.reference_comparison:
        return
    doc.h(
        3,
        f"Against the reference group `{analysis.experiment.reference}` "
        "(difference of means, relative)",
    )
    doc.table(
        [Column("group", as_is), *[Column(f"`{m}`", partial(difference, m)) for m in metrics]],
        [group for group in groups if any(result.comparison(group, m) for m in metrics)],
    )
    doc.table(
        [
            Column("group", lambda comparison: comparison.group),
            Column(f"Δ `{primary}`", lambda comparison: comparison.diff, fmt),
            Column("95% Welch CI", lambda comparison: comparison.ci, ci),
            Column("p (Welch, raw)", lambda comparison: comparison.p, fmt),
        ],
        [found for group in groups if (found := result.comparison(group, primary))],
    )


PROBE_COLUMN = "loss.probe_forgetting"


def section_probes(doc: Doc, exp: Experiment, frame: pd.DataFrame, result: BudgetAnalysis) -> None:
    """General ability (``data.probes``, never trained on): each group's probe loss after the
    stream minus before it, per probe and mean over the probes, and where the probes started."""
    prefix = f"{PROBE_COLUMN}@"
    probes = [c[len(prefix):] for c in frame.columns if c.startswith(prefix)]
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


def section_effects(
    doc: Doc,
    exp: Experiment,
    frame: pd.DataFrame,
    result: BudgetAnalysis,
    analysis: Analysis,
    figs: Path,
    tag: str,
) -> None:
    primary = analysis.settings.primary
    fit = result.factorial.get(primary)
    if not fit or not fit.factors:
        return
    doc.h(3, f"Factorial effects on `{primary}` (pre-registered test)")
    doc.p(
        "Effect = mean(+1) − mean(−1) = 2 × OLS coefficient under ±1 effect coding; model with all "
        f"interactions{', order as a block' if fit.blocked else ''}; type III ANOVA; "
        f"p corrected with `{fit.correction}` across the factorial terms."
    )
    if not fit.testable:
        doc.warn(
            f"no significance test: {fit.reason}. Estimates only, without intervals or p-values."
        )
    doc.table(term_columns(fit), fit.terms)
    if fit.block:
        block = fit.block
        doc.p(
            f"Order block: F = {fmt(block.F)}, p = {fmt(block.p)}, partial η² = {fmt(block.partial_eta_sq)}."
        )
    doc.image(
        plots.plot_effects(fit, figs, f"{tag}effects"),
        f"Effect decomposition of {primary}: main effects and interactions, 95% intervals",
    )
    doc.image(
        plots.plot_interactions(frame, exp.factors, primary, figs, f"{tag}interactions"),
        f"Interaction plots of {primary}",
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


def section_gains_and_perf(
    doc: Doc, result: BudgetAnalysis, analysis: Analysis, figs: Path, tag: str
) -> None:
    primary = analysis.settings.primary
    if result.marginal_gains:
        doc.h(3, "Marginal gains (primary metric against extra training FLOPs)")
        doc.table(
            GAIN_COLUMNS, [point for curve in result.marginal_gains.values() for point in curve]
        )
        doc.image(
            plots.plot_marginal_gains(result.marginal_gains, primary, figs, f"{tag}gains"),
            "Marginal-gain curves",
        )
    doc.h(3, "Timing, memory and parameters (means per group)")
    doc.table(PERFORMANCE_COLUMNS, result.performance)
    doc.image(
        plots.plot_performance(result.performance, figs, f"{tag}performance"),
        "Parameters, training speed and peak memory per group",
    )


def section_curves(doc: Doc, exp: Experiment, frame: Any, figs: Path, tag: str) -> None:
    """Training loss and per-domain validation loss across the stream, stages marked."""
    drawn = plots.plot_learning_curves(exp, frame, figs, f"{tag}learning_curves")
    if drawn:
        doc.image(
            drawn[0],
            f"Training loss per group (mean over runs; order {drawn[1]}); dashed: stage boundaries",
        )
    drawn = plots.plot_domain_curves(exp, frame, figs, f"{tag}domain_curves")
    if drawn:
        doc.image(
            drawn[0],
            f"Validation loss of each domain across the stream, per group (mean over runs; order "
            f"{drawn[1]}); shaded: the stage that trains the domain",
        )


VERDICT_COLUMNS: list[Column[Verdict]] = [
    Column("id", lambda verdict: verdict.id),
    Column("criterion", lambda verdict: f"`{verdict.criterion}`"),
    Column("verdict", lambda verdict: verdict.label),
    Column(
        "evidence (group means)",
        lambda verdict: "; ".join(f"{name} = {fmt(x)}" for name, x in verdict.evidence.items()),
    ),
    Column("bootstrap support", lambda verdict: "n/a" if verdict.support is None else f"{100 * verdict.support:.0f}%"),
    Column("note", lambda verdict: verdict.note or ""),
]


def section_verdicts(doc: Doc, result: BudgetAnalysis) -> None:
    if result.hypotheses:
        doc.h(3, "Hypothesis verdicts")
        doc.table(VERDICT_COLUMNS, result.hypotheses)
    doc.h(3, "Conclusions")
    statements = result.conclusions.statements
    doc.bullets(statements or ["No conclusion can be drawn from these runs."])


def section_samples(doc: Doc, exp: Experiment) -> None:
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


def section_definitions(doc: Doc) -> None:
    doc.h(2, "Definitions")
    doc.bullets(
        [
            "Scores are higher-is-better (accuracy, negated loss); forgetting is positive when performance dropped.",
            "Effect coding: a factor's first listed level is −1, the second +1; reported effect = mean(+1) − mean(−1) = 2β.",
            "Super-additive interaction: significant with a benefit (sign-adjusted so positive = better) above zero: "
            "the factors together beat the sum of their single effects; sub-additive: below zero.",
            "Minimal mechanism set: fewest factors 'on' whose combination is not significantly worse than the best "
            "(Welch t-tests against the best, corrected).",
            "Seed variance: pooled within-order variance over seeds; order variance: variance of per-order means.",
        ]
    )
    doc.h(3, "Hypothesis namespace")
    doc.p(
        "Criteria are expressions over `<alias>.<group>` (group mean), e.g. `abs(ppl.C - ppl.B) / ppl.B < 0.05`; "
        "every results column is also an alias with `.`/`@` replaced by `_`; `effect.T`, `effect_lo.T`, "
        "`effect_hi.T`, `p.T` give the primary metric's factorial terms (`T:W` → `T_W`). Allowed: numbers, "
        "arithmetic, comparisons, and/or/not, abs/min/max."
    )
    doc.table(ALIAS_COLUMNS, ALIASES.items())


def build(exp: Experiment, analysis: Analysis, figs: Path) -> Doc:
    """The report document (plots are drawn into ``figs`` as it is built)."""
    doc = Doc(f"Experiment record: {exp.name}")
    section_header(doc, exp, analysis)
    section_glance(doc, analysis)
    section_prereg(doc, analysis.preregistration)
    section_config(doc, exp, analysis)
    section_base_models(doc, exp)
    section_environment(doc, exp)
    section_execution(doc, analysis)
    section_unigram_floor(doc, exp)
    finished = exp.finished()
    for budget, result in analysis.budgets.items():
        tag = f"{budget}-" if len(analysis.budgets) > 1 else ""
        frame = finished[finished["budget"] == budget]
        doc.h(2, f"Results, budget `{budget}`" if tag else "Results")
        section_results(doc, result, analysis, figs, tag)
        section_probes(doc, exp, frame, result)
        section_effects(doc, exp, frame, result, analysis, figs, tag)
        section_gains_and_perf(doc, result, analysis, figs, tag)
        doc.image(
            plots.plot_r_heatmaps(exp, frame, figs, f"{tag}r_matrices"),
            "Mean loss R matrix per group (rows: after each stage)",
        )
        section_curves(doc, exp, frame, figs, tag)
        section_verdicts(doc, result)
    if not analysis.budgets:
        doc.warn("no finished run: nothing to analyse yet.")
    section_samples(doc, exp)
    section_definitions(doc)
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
