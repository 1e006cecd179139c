"""``forgetlab plan`` and the study half of ``forgetlab run``: the experiments layer's commands.

:func:`register` adds ``plan`` to the main app; ``forgetlab run`` calls :func:`run_experiment_cli`
when :func:`forgetlab.specs.is_study_spec` says its TOML is a study rather than a single run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from forgetlab.analysis.tables import Column, rich_table
from forgetlab.cli.console import amount, make_console
from forgetlab.cli.errors import user_errors
from forgetlab.config import ConfigError, load_toml

console = make_console()


def run_experiment_cli(
    spec: Path,
    out: Path | None,
    scale: str | None,
    workers: int,
    executor: str,
    overrides: list[str] | None,
    quiet: bool,
    address: str | None = None,
) -> None:
    """Run every run of a study spec into ``out`` (default ``results/NAME[-SCALE]``); exit code 1
    when a run failed (the others still ran, and a re-run retries only what is not finished)."""
    from forgetlab.experiments import load_spec, run_experiment
    from forgetlab.experiments.store import default_study_dir

    raw = load_toml(spec)
    parsed, scale_name = load_spec(raw, scale)
    out = out or default_study_dir(parsed.name, scale_name)
    summary = run_experiment(
        raw, out, scale, workers, executor, overrides, quiet, list(sys.argv), address
    )
    console.print(
        f"{parsed.name}: {summary['planned']} planned runs ({summary['distinct']} distinct): "
        f"{summary['finished']} finished ({summary['skipped_finished']} already were), "
        f"{len(summary['failed'])} failed"
    )
    for run_id, error in summary["errors"].items():
        console.print(
            f"[red]failed[/] {run_id}: {error.splitlines()[0] if error else ''}", highlight=False
        )
    console.print(f"experiment directory: [bold]{out}[/] (results.parquet, experiment.json)")
    if summary["failed"]:
        raise typer.Exit(1)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# one row per (group, budget) cell: (group, budget, the cell's runs); a cell's runs share a shape
CELL_COLUMNS: list[Column[tuple[str, str, list[dict[str, Any]]]]] = [
    Column("group", lambda cell: cell[0]),
    Column("budget", lambda cell: cell[1]),
    Column("runs", lambda cell: len(cell[2]), justify="right"),
    Column("steps/stage", lambda cell: cell[2][0]["steps_per_stage"], justify="right"),
    Column("tokens/run", lambda cell: cell[2][0]["train_tokens"], _fmt, "right"),
    Column("FLOPs/run", lambda cell: cell[2][0]["flops_training"], _fmt, "right"),
    Column("6ND/run", lambda cell: cell[2][0]["flops_6nd"], _fmt, "right"),
    Column("wall/run here", lambda cell: f"{amount(cell[2][0]['wall_s'])} s", justify="right"),
]
GPU_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("GPU", lambda gpu: gpu["name"]),
    Column("effective TFLOP/s", lambda gpu: f"{gpu['effective_flops'] / 1e12:,.1f}",
           justify="right"),
    Column("utilisation", lambda gpu: f"{gpu['utilisation']:.1%}", justify="right"),
    Column("$/h", lambda gpu: f"{gpu['price_per_hour']:.2f}", justify="right"),
    Column("s/run", lambda gpu: gpu["seconds_per_run"], amount, "right"),
    Column("GPU-hours", lambda gpu: gpu["gpu_hours"], amount, "right"),
    Column("cost $", lambda gpu: gpu["cost"], amount, "right"),
    Column("s/run 6ND", lambda gpu: gpu["seconds_per_run_6nd"], amount, "right"),
    Column("GPU-hours 6ND", lambda gpu: gpu["gpu_hours_6nd"], amount, "right"),
    Column("cost $ 6ND", lambda gpu: gpu["cost_6nd"], amount, "right"),
]
CACHED = {True: "yes (0 s)", False: "no", None: "unknown (data not prepared)"}
BASE_COLUMNS: list[Column[dict[str, Any]]] = [
    Column("domains", lambda base: base["data"]),
    Column("steps", lambda base: base["steps"], justify="right"),
    Column("runs", lambda base: base["runs"], justify="right"),
    Column("tokens", lambda base: base["train_tokens"], _fmt, "right"),
    Column("FLOPs", lambda base: base["flops_training"], _fmt, "right"),
    Column("6ND", lambda base: base["flops_6nd"], _fmt, "right"),
    Column("wall here", lambda base: f"{amount(base['wall_s'])} s", justify="right"),
    Column("cached", lambda base: CACHED[base["cached"]], justify="right"),
]


def print_base_models(bases: list[dict[str, Any]]) -> None:
    """The bases a study pretrains before its runs, each costed once (not in the run totals)."""
    if not bases:
        return
    gpus = [
        Column(f"{name} s / $", lambda base, i=i: base["gpus"][i],
               lambda g: f"{amount(g['seconds'])} / {amount(g['cost'])}", "right")
        for i, name in enumerate(g["name"] for g in bases[0]["gpus"])
    ]
    title = "base models (trained once before the runs, shared; not in the run totals)"
    console.print(rich_table([*BASE_COLUMNS, *gpus], bases, title=title))


def print_plan(plan: dict[str, Any]) -> None:
    console.print(
        f"[bold]{plan['name']}[/] scale={plan['scale']} design={plan['design']} "
        f"reference={plan['reference']}: {plan['n_runs']} planned runs, "
        f"{plan['n_distinct_runs']} distinct"
    )
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in plan["runs"]:
        by_cell.setdefault((run["group"], run["budget"]), []).append(run)
    cells = [(group, budget, runs) for (group, budget), runs in by_cell.items()]
    console.print(rich_table(CELL_COLUMNS, cells, title="runs per group and budget"))
    print_base_models(plan.get("base_models") or [])
    totals = plan["totals"]
    throughput = plan["throughput"]
    console.print(
        f"totals over distinct runs: {_fmt(totals['train_tokens'])} training tokens, "
        f"{_fmt(totals['flops_training'])} training FLOPs (+{_fmt(totals['flops_eval'])} "
        f"evaluation), 6ND {_fmt(totals['flops_6nd'])}; wall here {totals['wall_s'] / 3600:,.2f} h "
        f"at {throughput['flops_per_s'] / 1e9:,.1f} GFLOP/s on {throughput['device']} "
        f"({throughput['source']})"
    )
    console.print(rich_table(GPU_COLUMNS, plan["gpus"], title="reference GPUs (one run per GPU)"))
    uncalibrated = [g for g, f in plan["flops_by_group"].items() if f.get("source") == "model only"]
    if uncalibrated:
        console.print(
            f"[yellow]note:[/] mechanism FLOPs of {uncalibrated} not measured here "
            "(too slow on this machine); `forgetlab run` calibrates them."
        )


@user_errors()
def plan_command(
    spec: Annotated[
        Path, typer.Argument(help="study spec: a TOML file, or a shipped spec's name (qk_freeze)")
    ],
    scale: Annotated[str | None, typer.Option(help="a \\[scales.NAME] block of the spec")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override for every run, e.g. train.lr=3e-4")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    out: Annotated[
        Path | None, typer.Option(help="an experiment directory whose FLOPs calibrations to reuse")
    ] = None,
) -> None:
    """The study's runs with stable ids, tokens, FLOPs, wall time here, GPU-hours and cost."""
    from forgetlab.experiments import ExperimentStore, build_plan, load_spec
    from forgetlab.specs import STUDY_KEYS, is_study_spec, resolve_spec

    spec = resolve_spec(spec)
    raw = load_toml(spec)
    if not is_study_spec(raw):
        raise ConfigError(
            f"spec file {str(spec)!r} is a single-run spec: `forgetlab plan` takes a study spec "
            f"(one with {' / '.join(STUDY_KEYS)}); run it with `forgetlab run`"
        )
    parsed, scale_name = load_spec(raw, scale)
    parsed.overrides = [*parsed.overrides, *(overrides or [])]
    cache = ExperimentStore(out).calibration() if out else None
    plan = build_plan(parsed, scale_name, calibration_cache=cache)
    if as_json:
        typer.echo(json.dumps(plan, indent=2, default=str))
        return
    print_plan(plan)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
