"""Rich tables of a run's results: the R matrices beside the unigram baseline, and the CL metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgetlab.analysis.floor import shortfalls
from forgetlab.analysis.joint import joint_weighting, stage_labels
from forgetlab.analysis.metrics import KINDS
from forgetlab.analysis.registry import MATRIX, PROBE
from forgetlab.analysis.tables import Column, rich_table
from forgetlab.cli.console import make_console

KIND_TITLES = {"loss": "loss (nats/token)", "bpb": "bits per byte", "accuracy": "top-1 accuracy"}


def row_labels(record: dict[str, Any]) -> list[str]:
    """The rows of every score matrix of a run: ``init``, then the stage each row follows."""
    trained = stage_labels(record["domains"], joint_weighting(record))  # joint: every domain
    return ["init", *(f"{i}:{d}" for i, d in enumerate(trained, start=1))]


def scores_table(
    title: str, columns: list[str], rows: list[list[float]], labels: list[str],
    unigram: list[float | None],
) -> Table:
    """One score matrix (rows after each stage) with the unigram baseline as its last row."""
    declared: list[Column[tuple[str, list[float]]]] = [
        Column("after", lambda row: row[0], style="bold"),
        *[Column(c, lambda row, j=j: row[1][j], _score, "right") for j, c in enumerate(columns)],
    ]
    table = rich_table(declared, zip(labels, rows, strict=False), title=escape(title))
    table.add_row("unigram", *("—" if v is None else _score(v) for v in unigram), style="dim")
    return table


def _score(v: float) -> str:
    return f"{v:.3f}"


def r_matrix_table(record: dict[str, Any], kind: str) -> Table:
    title = f"R[{kind}]: {KIND_TITLES[kind]} (row: after stage, column: domain)"
    return scores_table(
        title, record["domains"], record["R"][kind], row_labels(record), record["unigram"][kind]
    )


def probe_table(record: dict[str, Any], kind: str) -> Table:
    """The probe matrix of ``kind`` (rows as R's, one column per probe), its unigram baseline
    (none for a probe without a train split) and, once the stream is done, each probe's
    forgetting (last row minus first for a loss)."""
    probes = record["probes"]
    names = probes["domains"]
    title = f"probes[{kind}]: {KIND_TITLES[kind]}, never trained on (row: after stage)"
    table = scores_table(
        title, names, probes["R"][kind], row_labels(record), probes["unigram"][kind]
    )
    forgetting = (probes.get("metrics") or {}).get(kind, {}).get("probe_forgetting")
    if forgetting:
        label = "forgetting (init − last)" if kind == "accuracy" else "forgetting (last − init)"
        table.add_row(label, *(_fmt(forgetting["per_probe"][p]) for p in names), style="bold")
    return table


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v)


def metrics_table(record: dict[str, Any]) -> Table:
    """The metrics every kind has, one row per metric (per-lag ones once per lag), then the
    probes' means."""
    metrics = record["metrics"]
    kinds = [k for k in KINDS if k in metrics]
    rows: list[tuple[str, Callable[[str], Any]]] = []
    for x in MATRIX:  # the metrics every kind has (final_mean is the R matrices' last row)
        if x.kinds != KINDS or x.shape == "per_domain":
            continue
        if x.shape == "scalar":
            rows.append((x.name, lambda k, name=x.name: metrics[k][name]))
            continue
        lags = len(metrics[kinds[0]][x.name]) if kinds else 0
        rows += [
            (f"{x.name}@{lag}", lambda k, name=x.name, lag=lag: metrics[k][name][str(lag)])
            for lag in range(1, lags + 1)
        ]
    probed = (record.get("probes") or {}).get("metrics") or {}
    for x in PROBE:  # the mean over the probes; each probe's is in the probe tables
        if all(x.name in probed.get(k, {}) for k in kinds):
            rows.append((f"{x.name} (mean)", lambda k, name=x.name: probed[k][name]["mean"]))
    columns: list[Column[tuple[str, Callable[[str], Any]]]] = [
        Column("metric", lambda row: row[0], style="bold"),
        *[Column(k, lambda row, k=k: row[1](k), _fmt, "right") for k in kinds],
    ]
    title = "continual-learning metrics (scores higher-is-better; forgetting > 0 = lost)"
    return rich_table(columns, rows, title=title)


def base_model_line(record: dict[str, Any]) -> str | None:
    """What a run with ``[base_model]`` started from: the base's key, data, steps and weights."""
    b = record.get("base_model")
    if not b:
        return None
    return (
        f"started from base model {b['key']}: pretrained on {b.get('data') or ', '.join(b['domains'])} for "
        f"{b['steps']:,} steps ({b['train_tokens']:,} tokens, seed {b['seed']}), weights sha256 "
        f"{(b.get('sha256') or '?')[:12]}; row 'init' of R scores it"
    )


def print_run_summary(record: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    if (line := base_model_line(record)) is not None:
        console.print(escape(line))
    for kind in ("loss", "accuracy"):
        console.print(r_matrix_table(record, kind))
    for s in shortfalls(record):
        console.print(f"[yellow]warning: {escape(s.sentence())}.[/yellow]")
    if record.get("probes"):
        for kind in ("loss", "accuracy"):
            console.print(probe_table(record, kind))
    if record.get("metrics"):
        console.print(metrics_table(record))
    t = record["timing"]["throughput"]
    mfu = f"{t['mfu']:.1%}" if t.get("mfu") else "n/a"
    console.print(
        f"train {t['train_tokens_per_s']:,.0f} tokens/s, MFU {mfu} "
        f"(peak {t['peak_flops'] or 0:.3g} FLOP/s, {t['peak_source']}), precision {record['precision']}"
    )
