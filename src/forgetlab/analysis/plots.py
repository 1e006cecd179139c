"""The report's figures: one function per plot, each saved as PNG (embedded in HTML) and SVG.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state): safe in any
process, never opens a window. Every function takes the analysis' typed results (or the
experiment and its results frame), writes ``<stem>.png`` and ``<stem>.svg`` into ``out`` and
returns the PNG path, or None when there is nothing to draw; the curve plots return the path with
a note for the caption (the domain order they draw).

Curves are drawn from what the runs measured: a step without a measurement (no token trained, no
evaluation) is left out of its line, never drawn as 0. Stage boundaries are marked, each stage
labelled with its domain, and the R heatmaps carry their numbers in the cells.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from forgetlab.analysis.effects import FactorialResult
from forgetlab.analysis.gains import GainPoint
from forgetlab.analysis.joint import joint_weighting, stage_labels
from forgetlab.analysis.load import Experiment
from forgetlab.analysis.stats import GroupStat

if TYPE_CHECKING:
    from forgetlab.analysis.document import GroupPerformance

DPI = 100


def _save(fig: Figure, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if not fig.get_layout_engine():
        fig.tight_layout()
    with rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, and smaller
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


def common_order(exp: Experiment, run_ids: list[str]) -> list[str]:
    """The domain order most of these runs trained in (the first seen among equally common ones),
    so that every curve and matrix of a figure reads its stages the same way."""
    orders = [tuple(exp.records[r].get("domains") or []) for r in run_ids if r in exp.records]
    orders = [o for o in orders if o]
    if not orders:
        return []
    return list(max(dict.fromkeys(orders), key=orders.count))


def _in_order(exp: Experiment, run_ids: list[str], order: list[str]) -> list[str]:
    return [
        r
        for r in run_ids
        if r in exp.records and list(exp.records[r].get("domains") or []) == order
    ]


def mean_r(exp: Experiment, run_ids: list[str], kind: str = "loss") -> tuple[np.ndarray, list[str]]:
    """Mean R matrix of the runs sharing the most common domain order, and that order.

    A tie goes to the order met first in ``run_ids`` (not to a set's hash order, which changes with
    ``PYTHONHASHSEED`` and made the heatmap differ between two reports of the same study).
    """
    order = common_order(exp, [r for r in run_ids if exp.records.get(r, {}).get("R")])
    mats = [
        np.asarray(exp.records[r]["R"][kind], dtype=float)
        for r in _in_order(exp, run_ids, order)
        if exp.records[r].get("R")
    ]
    return np.mean(mats, axis=0), order


def plot_r_heatmaps(exp: Experiment, frame: pd.DataFrame, out: Path, stem: str) -> Path | None:
    """Mean loss R matrix per group (rows: after stage i, columns: domain), each cell's value
    written in it so that the figure is read without the colour bar."""
    groups = [
        (g, list(sub["run_id"]))
        for g, sub in frame.groupby("group", sort=False)
        if any(r in exp.records and exp.records[r].get("R") for r in sub["run_id"])
    ]
    if not groups:
        return None
    joint = {  # a joint group's rows are points of one pass, not domains
        g: next(filter(None, (joint_weighting(exp.records.get(r) or {}) for r in ids)), None)
        for g, ids in groups
    }
    mats = [(g, *mean_r(exp, ids)) for g, ids in groups]
    lo = min(float(np.nanmin(m)) for _, m, _ in mats)
    hi = max(float(np.nanmax(m)) for _, m, _ in mats)
    cols = min(4, len(mats))
    rows = int(np.ceil(len(mats) / cols))
    fig = Figure(figsize=(3.3 * cols + 1, 3.0 * rows), layout="constrained")
    axes = []
    for k, (g, r, domains) in enumerate(mats):
        ax = fig.add_subplot(rows, cols, k + 1)
        im = ax.imshow(r, cmap="viridis_r", aspect="auto", vmin=lo, vmax=hi)
        _write_cells(ax, r, lo, hi, fontsize=7 if r.shape[1] <= 5 else 5)
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right", fontsize=7)
        ticks = ["init", *[f"after {d}" for d in stage_labels(domains, joint[g])]]
        ax.set_yticks(range(r.shape[0]), ticks, fontsize=7)
        ax.set_title(f"{g}", fontsize=9)
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="validation loss (shared scale)")
    return _save(fig, out, stem)


def _write_cells(ax: Any, m: np.ndarray, lo: float, hi: float, fontsize: float) -> None:
    """Each cell's value, in white on the dark end of ``viridis_r`` (high values) and black on
    the light end, so that every number stays readable."""
    mid = (lo + hi) / 2
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            colour = "white" if v > mid else "black"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fontsize, color=colour)


def trained_loss(curve: pd.DataFrame) -> pd.DataFrame:
    """``step`` and ``train_loss`` of the logged training steps that trained on some token.

    A step whose gate (``selective_write``) wrote no token has no training loss: the trainer
    records it as missing. Records written before it did so hold 0.0 there, with a zero gradient
    norm; a mean cross-entropy with its gradient exactly zero is such a step, never a measurement,
    and plotting it as loss 0 would squash the axis. Both kinds are dropped here.
    """
    if "train_loss" not in curve:
        return pd.DataFrame({"step": [], "train_loss": []})
    rows = curve[curve["train_loss"].notna()]
    if "grad_norm" in rows:
        rows = rows[~((rows["train_loss"] == 0) & (rows["grad_norm"] == 0))]
    return rows[["step", "train_loss"]]


def validation_points(record: dict[str, Any], curve: pd.DataFrame | None) -> pd.DataFrame:
    """One run's validation loss per domain against the global step: every domain before
    training (step 0) and at each stage end (the rows of R), plus the in-stage evaluations of the
    domain being learned (``train.eval_every``). Columns ``domain``, ``step``, ``val_loss``."""
    order = list(record.get("domains") or [])
    r = (record.get("R") or {}).get("loss") or []
    sps = _steps_per_stage(record)
    rows = [
        {"domain": d, "step": i * sps, "val_loss": float(v)}
        for i, row in enumerate(r)
        for d, v in zip(order, row, strict=False)
        if v is not None
    ]
    if curve is not None and "val_loss" in curve:
        inner = curve[curve["val_loss"].notna()]
        for rec in inner.to_dict("records"):
            domain = rec.get("domain")
            if not isinstance(domain, str):
                domain = order[int(rec["stage"])] if int(rec["stage"]) < len(order) else None
            if domain is not None:
                rows.append(
                    {"domain": domain, "step": int(rec["step"]), "val_loss": rec["val_loss"]}
                )
    points = pd.DataFrame(rows, columns=["domain", "step", "val_loss"])
    return points.drop_duplicates(["domain", "step"], keep="first")


def _steps_per_stage(record: dict[str, Any]) -> int:
    return int(((record.get("config") or {}).get("train") or {}).get("steps_per_stage") or 0)


class CurveAxis:
    """The x axis the curves of one figure share: optimizer steps when every run trains the same
    number of steps per stage; otherwise stages (a matched-FLOPs budget gives groups different
    step counts, and their stages only line up in stage units)."""

    def __init__(self, exp: Experiment, run_ids: list[str]) -> None:
        steps = {_steps_per_stage(exp.records[r]) for r in run_ids}
        self.in_steps = len(steps) == 1 and 0 not in steps
        self.sps = steps.pop() if self.in_steps else 0
        self.label = "optimizer step (all stages)" if self.in_steps else "stage (fraction done)"

    def x(self, steps: pd.Series | np.ndarray, record: dict[str, Any]) -> np.ndarray:
        values = np.asarray(steps, dtype=float)
        return values if self.in_steps else values / max(_steps_per_stage(record), 1)

    def mark_stages(self, ax: Any, order: list[str], label: bool = True) -> None:
        """A dashed line at every stage boundary; the domain each stage trains on written above."""
        width = self.sps if self.in_steps else 1
        for k in range(1, len(order)):
            ax.axvline(k * width, color="gray", ls="--", lw=0.8, alpha=0.7)
        if label:
            for k, d in enumerate(order):
                ax.text(
                    (k + 0.5) * width,
                    1.01,
                    d,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="dimgray",
                )


def _order_note(exp: Experiment, frame: pd.DataFrame, used: list[str], order: list[str]) -> str:
    n = len([r for r in frame["run_id"] if r in exp.records])
    note = " → ".join(order)
    return note if len(used) == n else f"{note} ({len(used)} of {n} runs: those in this order)"


def curve_runs(
    exp: Experiment, frame: pd.DataFrame, ids: list[str]
) -> tuple[list[str], CurveAxis, dict[str, list[str]], list[str]] | None:
    """What a curve figure draws from: the most common domain order among ``ids``, the x axis
    those runs share, each group's runs in that order, and all runs used; None when none is."""
    order = common_order(exp, ids)
    used = _in_order(exp, ids, order)
    if not used:
        return None
    per_group = {
        str(g): [r for r in sub["run_id"] if r in used]
        for g, sub in frame.groupby("group", sort=False)
    }
    return order, CurveAxis(exp, used), per_group, used


def train_curves(
    exp: Experiment, frame: pd.DataFrame
) -> tuple[list[str], CurveAxis, dict[str, pd.Series], list[str]] | None:
    """Each group's mean training loss against the shared x axis (see :class:`CurveAxis`), from
    the runs in the most common domain order: at one step, runs in different orders train on
    different domains, and their mean loss belongs to none. Returns the order, the axis, the
    curves and the runs used; None when no run has a curve."""
    runs = curve_runs(exp, frame, [r for r in frame["run_id"] if r in exp.records])
    if runs is None:
        return None
    order, axis, per_group, used = runs
    out: dict[str, pd.Series] = {}
    for g, group_runs in per_group.items():
        points = []
        for r in group_runs:
            curve = exp.curves(r)
            if curve is not None:
                loss = trained_loss(curve)
                x = axis.x(loss["step"], exp.records[r])
                points.append(pd.DataFrame({"x": x, "y": loss["train_loss"].to_numpy()}))
        points = [p for p in points if not p.empty]
        if points:
            out[g] = pd.concat(points).groupby("x")["y"].mean()
    return (order, axis, out, used) if out else None


def plot_learning_curves(
    exp: Experiment, frame: pd.DataFrame, out: Path, stem: str
) -> tuple[Path, str] | None:
    """Training loss per group (mean over its runs) with the stage boundaries marked. Returns the
    PNG and a note naming the domain order drawn (and how many runs it holds), for the caption."""
    curves = train_curves(exp, frame)
    if curves is None:
        return None
    order, axis, lines, used = curves
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for g, mean in lines.items():
        ax.plot(mean.index, mean.to_numpy(), label=g, lw=1.2)
    axis.mark_stages(ax, order)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, out, stem), _order_note(exp, frame, used, order)


def plot_domain_curves(
    exp: Experiment, frame: pd.DataFrame, out: Path, stem: str
) -> tuple[Path, str] | None:
    """Validation loss of each domain across the whole stream, one panel per domain, one line
    per group (mean over its runs in the most common order): where a domain is learned, and how
    much of it each group keeps while the later stages train. Returns the PNG and the order note."""
    ids = [r for r in frame["run_id"] if r in exp.records and exp.records[r].get("R")]
    runs = curve_runs(exp, frame, ids)
    if runs is None:
        return None
    order, axis, group_runs, used = runs
    per_group: dict[str, pd.DataFrame] = {}
    for g, rs in group_runs.items():
        points = []
        for r in rs:
            p = validation_points(exp.records[r], exp.curves(r))
            points.append(p.assign(x=axis.x(p["step"], exp.records[r])))
        if points:
            per_group[g] = pd.concat(points).groupby(["domain", "x"])["val_loss"].mean()
    cols = min(3, len(order))
    rows = int(np.ceil(len(order) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.6), layout="constrained")
    for k, d in enumerate(order):
        ax = fig.add_subplot(rows, cols, k + 1)
        for g, mean in per_group.items():
            if d in mean.index.get_level_values(0):
                line = mean.loc[d]
                ax.plot(line.index, line.to_numpy(), marker=".", ms=3, lw=1.1, label=g)
        axis.mark_stages(ax, order, label=False)
        ax.axvspan(k * (axis.sps or 1), (k + 1) * (axis.sps or 1), color="gold", alpha=0.12)
        ax.set_title(f"{d} (trained in stage {k + 1}, shaded)", fontsize=9)
        ax.set_xlabel(axis.label, fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 8), fontsize=7)
    return _save(fig, out, stem), _order_note(exp, frame, used, order)


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
