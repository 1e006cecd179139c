"""The report's figures: one function per plot, each saved as PNG (embedded in HTML) and SVG.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state): safe in any
process, never opens a window. Every function takes the analysis' typed results (or the
experiment and its results frame), writes ``<stem>.png`` and
``<stem>.svg`` into ``out`` and returns the PNG path, or None when there is nothing to draw.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from forgetlab.analysis.effects import FactorialResult
from forgetlab.analysis.gains import GainPoint
from forgetlab.analysis.load import Experiment
from forgetlab.analysis.stats import GroupStat

if TYPE_CHECKING:
    from forgetlab.analysis.document import GroupPerformance

DPI = 100


def _save(fig: Figure, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(out / f"{stem}.svg")
    fig.savefig(out / f"{stem}.png", dpi=DPI)
    return out / f"{stem}.png"


def plot_group_metric(stats: list[GroupStat], metric: str, out: Path, stem: str) -> Path | None:
    """Mean of ``metric`` per group with its 95% t interval (a dot without bar when n = 1)."""
    rows = [s for s in stats if s.metric == metric and s.mean is not None]
    if not rows:
        return None
    fig = Figure(figsize=(7, 0.45 * len(rows) + 1.5))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    means = [s.mean for s in rows]
    lo = [s.mean - s.t_ci[0] if s.t_ci else 0.0 for s in rows]  # type: ignore[operator]
    hi = [s.t_ci[1] - s.mean if s.t_ci else 0.0 for s in rows]  # type: ignore[operator]
    ax.errorbar(means, y, xerr=[lo, hi], fmt="o", capsize=4, color="tab:blue")
    ax.set_yticks(y, [f"{s.group} (n={s.n})" for s in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean, 95% t interval)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, stem)


def plot_effects(fit: FactorialResult, out: Path, stem: str) -> Path | None:
    """Effect decomposition: every main effect and interaction with its 95% interval."""
    terms = [t for t in fit.terms if t.estimate is not None]
    if not terms:
        return None
    fig = Figure(figsize=(7, 0.45 * len(terms) + 1.6))
    ax = fig.add_subplot()
    y = np.arange(len(terms))
    colors = [
        "tab:red" if t.p_corrected is not None and t.p_corrected < fit.alpha else "tab:gray"
        for t in terms
    ]
    ax.barh(y, [t.estimate for t in terms], color=colors, alpha=0.8)
    for i, t in enumerate(terms):
        if t.ci:
            ax.plot(t.ci, [i, i], color="black", lw=1.5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [t.term for t in terms])
    ax.invert_yaxis()
    note = "red: significant after correction" if fit.testable else "no test: too few runs"
    ax.set_xlabel(f"effect on {fit.metric} (mean(+1) - mean(-1)); {note}")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, stem)


def plot_interactions(
    frame: pd.DataFrame, factors: dict[str, list[str]], metric: str, out: Path, stem: str
) -> Path | None:
    """One panel per pair of two-level factors: mean ``metric`` at each level combination."""
    two = [f for f, lv in factors.items() if len(lv) == 2 and f"factor.{f}" in frame]
    pairs = list(itertools.combinations(two, 2))
    if not pairs or frame[metric].dropna().empty:
        return None
    fig = Figure(figsize=(4 * len(pairs), 3.4))
    for k, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), k + 1)
        for level_b in factors[b]:
            sub = frame[frame[f"factor.{b}"].astype(str) == level_b]
            means = [
                sub.loc[sub[f"factor.{a}"].astype(str) == la, metric].mean() for la in factors[a]
            ]
            ax.plot(factors[a], means, marker="o", label=f"{b}={level_b}")
        ax.set_xlabel(a)
        ax.set_ylabel(metric)
        ax.set_title(f"{a} x {b}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, out, stem)


def mean_r(exp: Experiment, run_ids: list[str], kind: str = "loss") -> tuple[np.ndarray, list[str]]:
    """Mean R matrix of runs sharing the most common domain order, and that order.

    A tie goes to the order met first in ``run_ids`` (not to a set's hash order, which changes with
    ``PYTHONHASHSEED`` and made the heatmap differ between two reports of the same study).
    """
    recs = [exp.records[r] for r in run_ids if r in exp.records and exp.records[r].get("R")]
    orders = [tuple(r.get("domains") or []) for r in recs]
    common = max(dict.fromkeys(orders), key=orders.count)
    mats = [
        np.asarray(r["R"][kind], dtype=float)
        for r, o in zip(recs, orders, strict=True)
        if o == common
    ]
    return np.mean(mats, axis=0), list(common)


def plot_r_heatmaps(exp: Experiment, frame: pd.DataFrame, out: Path, stem: str) -> Path | None:
    """Mean loss R matrix per group (rows: after stage i, columns: domain)."""
    groups = [
        (g, list(sub["run_id"]))
        for g, sub in frame.groupby("group", sort=False)
        if any(r in exp.records and exp.records[r].get("R") for r in sub["run_id"])
    ]
    if not groups:
        return None
    mats = [(g, *mean_r(exp, ids)) for g, ids in groups]
    lo = min(float(m.min()) for _, m, _ in mats)
    hi = max(float(m.max()) for _, m, _ in mats)
    cols = min(4, len(mats))
    rows = int(np.ceil(len(mats) / cols))
    fig = Figure(figsize=(3.3 * cols + 1, 3.0 * rows), layout="constrained")
    axes = []
    for k, (g, r, domains) in enumerate(mats):
        ax = fig.add_subplot(rows, cols, k + 1)
        im = ax.imshow(r, cmap="viridis_r", aspect="auto", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(r.shape[0]), ["init", *[f"after {d}" for d in domains]], fontsize=7)
        ax.set_title(f"{g}", fontsize=9)
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="validation loss (shared scale)")
    return _save(fig, out, stem)


def plot_learning_curves(exp: Experiment, frame: pd.DataFrame, out: Path, stem: str) -> Path | None:
    """Training loss against global step, mean over each group's runs."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    drawn = False
    for g, sub in frame.groupby("group", sort=False):
        curves = [c for c in (exp.curves(r) for r in sub["run_id"]) if c is not None]
        curves = [c[["step", "train_loss"]].dropna() for c in curves if "train_loss" in c]
        if not curves:
            continue
        mean = pd.concat(curves).groupby("step")["train_loss"].mean()
        ax.plot(mean.index, mean.to_numpy(), label=str(g), lw=1.2)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("optimizer step (all stages)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, out, stem)


def plot_marginal_gains(
    gains: dict[str, list[GainPoint]], metric: str, out: Path, stem: str
) -> Path | None:
    """Gain in the primary metric (positive = better) against extra training FLOPs, per factor."""
    curves = {f: p for f, p in gains.items() if all(x.extra_flops is not None for x in p)}
    if not curves:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for factor, points in curves.items():
        ax.plot([p.extra_flops for p in points], [p.gain for p in points], marker="o", label=factor)
        for p in points:
            ax.annotate(
                p.level,
                (p.extra_flops, p.gain),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("extra training FLOPs vs the factor's first level")
    ax.set_ylabel(f"gain in {metric} (positive = better)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, stem)


def plot_performance(perf: list[GroupPerformance], out: Path, stem: str) -> Path | None:
    """Parameters (trainable / frozen), training speed and peak memory per group."""
    if not perf:
        return None
    groups = [p.group for p in perf]
    x = np.arange(len(groups))
    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    trainable = np.array([p.params_trainable or 0.0 for p in perf]) / 1e6
    total = np.array([p.params_total or 0.0 for p in perf]) / 1e6
    ax1.bar(x, trainable, label="trainable")
    ax1.bar(x, total - trainable, bottom=trainable, label="frozen")
    ax1.set_ylabel("parameters (M)")
    ax1.legend(fontsize=8)
    ax2.bar(x, [p.tokens_per_s or 0.0 for p in perf], color="tab:green")
    ax2.set_ylabel("training tokens / s")
    ax3.bar(x, [(p.peak_rss_bytes or 0.0) / 2**20 for p in perf], color="tab:purple")
    ax3.set_ylabel("peak RSS (MiB)")
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, stem)
