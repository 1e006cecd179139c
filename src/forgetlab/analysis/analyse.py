"""The whole analysis of one experiment as one typed :class:`Analysis`: what analysis.json holds.

Every number the report shows is in here, so other tools read the analysis without parsing prose
(:func:`forgetlab.analysis.document.load_analysis` reads analysis.json back into these types).
Each budget (same-shape, matched-FLOPs, ...) is analysed on its own: runs under different budgets
answer different questions and are never pooled.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from forgetlab.analysis.columns import PHASES
from forgetlab.analysis.conclusions import conclude
from forgetlab.analysis.document import (
    Analysis,
    BudgetAnalysis,
    ExperimentInfo,
    GroupPerformance,
    GroupRow,
    NamespaceEntry,
    Preregistration,
    RunRow,
    Settings,
    plain,
)
from forgetlab.analysis.effects import factorial_effects
from forgetlab.analysis.gains import marginal_gains
from forgetlab.analysis.hypotheses import ALIASES, judge
from forgetlab.analysis.joint import budget_bounds
from forgetlab.analysis.load import FINISHED, Experiment, metric_columns, preregistration_hash
from forgetlab.analysis.procedure import procedure
from forgetlab.analysis.registry import DEFAULT_PRIMARY, SECONDARY, lower_is_better
from forgetlab.analysis.stats import adjust, compare_to_reference, group_stats, omnibus_tests


def preregistration_status(meta: dict[str, Any]) -> Preregistration:
    """The block, its stored hash, and whether it was changed or added after the first run.

    ``status``: ``absent`` (never any block), ``unchanged`` (the block hashed when the first run
    started, still the same), ``changed`` (a later invocation's block differs, or the stored block
    no longer matches its hash) or ``added`` (no block when the first run started: one given by a
    later invocation, or written into experiment.json afterwards). ``changed`` is true for both of
    the last two: their tests are exploratory.
    """
    block, stored = meta.get("preregistration"), meta.get("preregistration_sha256")
    now = meta.get("preregistration_sha256_now")
    if block is None and stored is None:
        block = meta.get("preregistration_now")  # given after the first run started
        status = "absent" if block is None else "added"
    elif stored is None:
        status, now = "added", preregistration_hash(block)  # written into experiment.json later
    elif block is not None and preregistration_hash(block) != stored:
        status, now = "changed", preregistration_hash(block)  # the stored block was edited
    elif meta.get("preregistration_changed") or (now is not None and now != stored):
        status = "changed"
    else:
        status = "unchanged"
    return Preregistration(
        status=status,
        block=block,
        sha256=stored,
        sha256_now=now,
        registered_at=meta.get("preregistered_at"),
        changed=status in ("changed", "added"),
    )


def groups_table(exp: Experiment, frame: pd.DataFrame) -> list[GroupRow]:
    """Each group's factor levels and its finished runs, seeds and orders."""
    levels = {run["group"]: run.get("levels") or {} for run in exp.meta.get("runs", [])}
    out = []
    for group in dict.fromkeys(exp.results["group"].astype(str)):
        runs = frame[frame["group"] == group]
        out.append(
            GroupRow(
                group=group,
                levels=levels.get(group, {}),
                n_finished=len(runs),
                n_planned=int((exp.results["group"] == group).sum()),
                seeds=sorted({int(seed) for seed in runs["seed"].dropna()}),
                orders=sorted(set(runs["order"].astype(str))),
            )
        )
    return out


def performance(exp: Experiment, frame: pd.DataFrame) -> list[GroupPerformance]:
    """Per group: mean seconds per phase, throughput, MFU, peak memory and parameter counts."""
    out = []
    for group, runs in frame.groupby("group", sort=False):
        records = [exp.records[run_id] for run_id in runs["run_id"] if run_id in exp.records]
        phases = {
            phase: _mean(
                [((rec.get("timing") or {}).get("total") or {}).get(phase) for rec in records]
            )
            for phase in PHASES
        }
        out.append(
            GroupPerformance(
                group=str(group),
                phase_s=phases,
                wall_s=_mean(runs.get("wall_s", [])),
                tokens_per_s=_mean(runs.get("tokens_per_s", [])),
                mfu=_mean(runs.get("mfu", [])),
                peak_rss_bytes=_mean(runs.get("peak_rss_bytes", [])),
                peak_cuda_bytes=_mean(
                    [(rec.get("peak_memory") or {}).get("cuda_max_allocated") for rec in records]
                ),
                params_total=_mean(runs["params.total"]),
                params_trainable=_mean(runs["params.trainable"]),
                flops_training=_mean(runs.get("flops.training_total", [])),
            )
        )
    return out


def _mean(values: Any) -> float | None:
    xs = [float(v) for v in values if v is not None and not _isnan(v)]
    return float(np.mean(xs)) if xs else None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def analyse_budget(exp: Experiment, frame: pd.DataFrame, settings: Settings) -> BudgetAnalysis:
    """Statistics, effects, gains, hypotheses and conclusions of one budget's finished runs.

    The declared test decides (:mod:`forgetlab.analysis.procedure`): a factor design fits the
    factorial effects model, a group design runs its omnibus test where it has one; every
    group-versus-reference p is the declared pairwise test's.
    """
    primary, alpha, correction = settings.primary, settings.alpha, settings.correction
    pairwise, omnibus = settings.pairwise_test, settings.omnibus_test
    metrics = metric_columns(frame)
    interactions = exp.meta.get("design") != "one_at_a_time"
    fits = {
        metric: factorial_effects(frame, exp.factors, metric, correction, alpha, interactions)
        for metric in (primary, *SECONDARY)
        if metric in frame and settings.factorial
    }
    primary_fit = fits.get(primary)
    gains = marginal_gains(frame, exp.factors, primary) if primary in frame else {}
    prereg = exp.preregistration or {}
    reference = exp.reference if exp.reference in set(frame["group"]) else None
    gates = omnibus_tests(frame, metrics, omnibus) if omnibus else []
    comparisons = (
        adjust(compare_to_reference(frame, reference, metrics, pairwise, settings.seed),
               correction, gates)
        if reference
        else []
    )
    return BudgetAnalysis(
        n_finished=len(frame),
        groups=groups_table(exp, frame),
        group_stats=group_stats(frame, metrics, seed=settings.seed),
        reference_comparison=comparisons,
        omnibus=gates,
        factorial=fits,
        marginal_gains=gains,
        hypotheses=judge(
            prereg.get("hypotheses") or [],
            frame,
            metrics,
            primary_fit.terms if primary_fit else None,
            seed=settings.seed,
            # a group design's hypotheses read its groups' tests against the reference
            comparisons=None if settings.factorial else
            [c for c in comparisons if c.metric == primary],
        ),
        conclusions=conclude(
            primary_fit if primary_fit and primary_fit.factors else None,
            frame,
            exp.factors,
            primary,
            alpha,
            correction,
            gains,
            reference,
            pairwise,
            omnibus,
            settings.seed,
        ),
        performance=performance(exp, frame),
        joint_bounds=budget_bounds(frame, exp.records, reference),
    )


def analysis_settings(exp: Experiment, seed: int) -> Settings:
    """The pre-registered metric, alpha, correction and test (defaults where none is given), and
    the procedure the test means for the study's design (ConfigError for one it cannot use)."""
    prereg = exp.preregistration or {}
    primary = prereg.get("primary_metric") or DEFAULT_PRIMARY
    how = procedure(prereg.get("test"), exp.meta.get("design"))
    return Settings(
        primary=primary,
        alpha=float(prereg.get("alpha", 0.05)),
        correction=str(prereg.get("correction") or "holm"),
        test=how.test,
        pairwise_test=how.pairwise,
        omnibus_test=how.omnibus,
        factorial=how.factorial,
        co_primary=list(prereg.get("co_primary_metrics") or []),
        secondary=list(prereg.get("secondary_metrics") or []),
        seed=seed,
        primary_lower_is_better=lower_is_better(primary),
    )


def analyse(exp: Experiment, seed: int = 0) -> Analysis:
    """The analysis of an experiment (finished runs only; the rest are listed)."""
    settings = analysis_settings(exp, seed)
    results = exp.results
    finished = exp.finished()
    status_counts = results["status"].fillna("missing").value_counts().to_dict()
    return Analysis(
        experiment=ExperimentInfo(
            name=exp.name,
            design=exp.meta.get("design"),
            scale=exp.meta.get("scale"),
            factors=exp.factors,
            reference=exp.reference,
            started=exp.meta.get("started"),
            finished=exp.meta.get("finished"),
        ),
        settings=settings,
        preregistration=preregistration_status(exp.meta),
        runs=[
            RunRow(**{f.name: plain(row.get(f.name)) for f in dataclasses.fields(RunRow)})
            for row in results.to_dict("records")
        ],
        status_counts={str(status): int(n) for status, n in status_counts.items()},
        budgets={
            str(budget): analyse_budget(exp, runs.reset_index(drop=True), settings)
            for budget, runs in finished.groupby("budget", sort=False)
        },
        namespace={
            alias: NamespaceEntry(column=column, meaning=meaning)
            for alias, (column, _, meaning) in ALIASES.items()
        },
        finished_status=FINISHED,
    )
