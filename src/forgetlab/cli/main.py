"""The ``forgetlab`` command line: a thin layer over the library (every command calls one function)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from forgetlab.analysis.tables import Column, rich_table
from forgetlab.cli import data as data_cli
from forgetlab.cli import experiment_commands, model_commands, report_commands, spec_commands
from forgetlab.cli.console import make_console
from forgetlab.cli.errors import user_errors

app = typer.Typer(
    help="forgetlab: controlled experiments on forgetting in small GPT-style language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Speed benchmarks: training step, matmul peak.", no_args_is_help=True)
app.add_typer(data_cli.app, name="data")
app.add_typer(bench_app, name="bench")
model_commands.register(app)
report_commands.register(app)
experiment_commands.register(app)
spec_commands.register(app)
console = make_console()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
@user_errors()
def run(
    spec: Annotated[
        Path, typer.Argument(help="spec: a TOML file, or a shipped spec's name (cl_mechanisms)")
    ],
    out: Annotated[Path | None, typer.Option(help="run directory (default results/NAME)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. train.steps_per_stage=30")
    ] = None,
    mechanism: Annotated[
        list[str] | None,
        typer.Option(help="add a mechanism, e.g. replay:policy=reservoir,capacity=512"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    scale: Annotated[str | None, typer.Option(help="study specs: the \\[scales.NAME] block to use")] = None,
    workers: Annotated[int, typer.Option(help="study specs: runs in parallel (>= 1)")] = 1,
    executor: Annotated[str, typer.Option(help="study specs: local | ray | slurm")] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--executor ray: host:port of a running cluster, auto, or local "
                     "(default: RAY_ADDRESS, else a fresh local instance)"),
    ] = None,
) -> None:
    """Run a spec: a single run (train through the stream, print R and metrics) or a study
    (every run of its design, then results.parquet; see `forgetlab plan` and `forgetlab report`)."""
    from forgetlab.cli.render import print_run_summary
    from forgetlab.config import ConfigError, load_toml, resolve_run_config
    from forgetlab.mechanisms import parse_mechanism_option
    from forgetlab.specs import is_study_spec, resolve_spec
    from forgetlab.train.launch import default_run_dir, train_run

    spec = resolve_spec(spec)
    raw = load_toml(spec)
    if is_study_spec(raw):
        if mechanism:
            raise ConfigError(
                "--mechanism applies to single runs; a study sets mechanisms in its levels"
            )
        experiment_commands.run_experiment_cli(
            spec, out, scale, workers, executor, set_, quiet, address
        )
        return
    if scale is not None:
        raise ConfigError(f"--scale {scale!r}: {str(spec)!r} is a single-run spec without scales")
    if address is not None or executor != "local":
        raise ConfigError(
            f"--executor/--address apply to study specs; {str(spec)!r} is a single run, "
            "trained here"
        )
    cfg = resolve_run_config(raw, set_)
    if mechanism:
        cfg.mechanisms = [*cfg.mechanisms, *(parse_mechanism_option(m) for m in mechanism)]
    out = out or default_run_dir(cfg)
    record = train_run(cfg, out, progress=not quiet)
    print_run_summary(record, console)
    console.print(f"run directory: [bold]{out}[/]")


def _bench_config(preset: str, precision: str, compile_: bool, overrides: list[str] | None) -> Any:
    from forgetlab.config import resolve_run_config

    raw = {
        "model": {"preset": preset},
        "data": {"domains": ["code"], "val_batches": 1},
        "train": {"precision": precision, "compile": compile_},
    }
    return resolve_run_config(raw, overrides)


@bench_app.command("train")
@user_errors()
def bench_train_cmd(
    preset: Annotated[str, typer.Option(help="model preset")] = "tiny",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile/--no-compile")] = False,
    steps: Annotated[int, typer.Option(min=1)] = 10,
    warmup: Annotated[int, typer.Option(min=0)] = 3,
    set_: Annotated[list[str] | None, typer.Option("--set")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Tokens/s, ms per step, MFU and peak memory of the trainer's own step on real data."""
    from forgetlab.train.bench import bench_train

    cfg = _bench_config(preset, precision, compile_, set_)
    res = bench_train(cfg, steps=steps, warmup=warmup)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    columns: list[Column[tuple[str, Any]]] = [
        Column("field", lambda item: item[0]),
        Column("value", lambda item: f"{item[1]:,.4g}" if isinstance(item[1], float) else item[1],
               justify="right"),
    ]
    console.print(rich_table(columns, res.items(), title=f"bench train: {preset}"))


@bench_app.command("peak")
@user_errors()
def bench_peak_cmd(
    seconds: Annotated[float, typer.Option(help="seconds per precision")] = 2.0,
    size: Annotated[int, typer.Option(help="square matmul size")] = 2048,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Measure this machine's fp32 and bf16 matmul peak (FLOP/s) and store it for MFU."""
    from forgetlab.train.device import resolve_device
    from forgetlab.train.flops import measure_matmul_peak, save_cpu_peak

    device = resolve_device("auto")
    res = {}
    for precision in ("fp32", "bf16"):
        res[precision] = measure_matmul_peak(device, precision, size=size, seconds=seconds)
        if device.type == "cpu":
            save_cpu_peak(precision, res[precision])
    if as_json:
        typer.echo(json.dumps({"device": str(device), **res}))
        return
    for precision, value in res.items():
        console.print(f"{precision}: {value / 1e9:,.1f} GFLOP/s on {device}")


@app.command()
@user_errors()
def show(
    run_dir: Annotated[Path, typer.Argument(help="a run directory, or a study's directory")],
    group: Annotated[
        str | None, typer.Option(help="in a study: show this group's first finished run")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print run.json's R and metrics")] = False,
) -> None:
    """Print a run's R matrices, unigram baselines and metrics from its run.json."""
    from forgetlab.cli.render import print_run_summary
    from forgetlab.config import ConfigError
    from forgetlab.train import RunDir

    if group is not None:
        run_dir = _study_run(run_dir, group)
    record = RunDir(run_dir).read()
    if record is None:
        raise ConfigError(f"{str(run_dir)!r} holds no run.json: not a forgetlab run directory")
    if as_json:
        keys = ("status", "domains", "R", "unigram", "probes", "metrics", "flops", "tokens")
        typer.echo(json.dumps({k: record.get(k) for k in keys}, indent=2))
        return
    console.print(f"{run_dir}: {record['status']}")
    print_run_summary(record, console)


def _study_run(study_dir: Path, group: str) -> Path:
    """The directory of ``group``'s first finished run in a study's experiment.json."""
    from forgetlab.config import ConfigError
    from forgetlab.train import RunDir

    meta = study_dir / "experiment.json"
    if not meta.exists():
        raise ConfigError(
            f"--group needs a study directory; {str(study_dir)!r} has no experiment.json"
        )
    runs = json.loads(meta.read_text())["runs"]
    groups = sorted({r["group"] for r in runs})
    if group not in groups:
        raise ConfigError(f"--group = {group!r} is not a group of this study; allowed: {groups}")
    for r in runs:
        if r["group"] == group and RunDir(study_dir / r["dir"]).status() == "finished":
            return study_dir / r["dir"]
    raise ConfigError(f"group {group!r} has no finished run in {str(study_dir)!r}")


if __name__ == "__main__":
    app()
