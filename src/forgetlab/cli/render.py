"""Rich tables of a run's results: the R matrices beside the unigram baseline, and the CL metrics."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgetlab.analysis.metrics import KINDS
from forgetlab.analysis.registry import MATRIX
from forgetlab.cli.console import make_console

KIND_TITLES = {"loss": "loss (nats/token)", "bpb": "bits per byte", "accuracy": "top-1 accuracy"}


def r_matrix_table(record: dict[str, Any], kind: str) -> Table:
    domains = record["domains"]
    title = escape(f"R[{kind}]: {KIND_TITLES[kind]} (row: after stage, column: domain)")
    table = Table(title=title)
    table.add_column("after", style="bold")
    for d in domains:
        table.add_column(d, justify="right")
    for i, row in enumerate(record["R"][kind]):
        label = "init" if i == 0 else f"{i}:{domains[i - 1]}"
        table.add_row(label, *(f"{v:.3f}" for v in row))
    table.add_row("unigram", *(f"{v:.3f}" for v in record["unigram"][kind]), style="dim")
    return table


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v)


def metrics_table(record: dict[str, Any]) -> Table:
    table = Table(
        title="continual-learning metrics (scores higher-is-better; forgetting > 0 = lost)"
    )
    table.add_column("metric", style="bold")
    kinds = [k for k in KINDS if k in record["metrics"]]
    for k in kinds:
        table.add_column(k, justify="right")
    for x in MATRIX:  # the metrics every kind has (final_mean is the R matrices' last row)
        if x.kinds != KINDS or x.shape == "per_domain":
            continue
        if x.shape == "scalar":
            table.add_row(x.name, *(_fmt(record["metrics"][k][x.name]) for k in kinds))
            continue
        lags = len(record["metrics"][kinds[0]][x.name]) if kinds else 0
        for lag in range(1, lags + 1):
            table.add_row(
                f"{x.name}@{lag}", *(_fmt(record["metrics"][k][x.name][str(lag)]) for k in kinds)
            )
    return table


def print_run_summary(record: dict[str, Any], console: Console | None = None) -> None:
    console = console or make_console()
    for kind in ("loss", "accuracy"):
        console.print(r_matrix_table(record, kind))
    if record.get("metrics"):
        console.print(metrics_table(record))
    t = record["timing"]["throughput"]
    mfu = f"{t['mfu']:.1%}" if t.get("mfu") else "n/a"
    console.print(
        f"train {t['train_tokens_per_s']:,.0f} tokens/s, MFU {mfu} "
        f"(peak {t['peak_flops'] or 0:.3g} FLOP/s, {t['peak_source']}), precision {record['precision']}"
    )
