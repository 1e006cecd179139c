"""``forgetlab report EXP_DIR``: analyse an experiment directory and write its record into it.

:func:`register` adds the command to the main Typer app. A directory that is not an experiment (or
an invalid pre-registration) prints one line and exits with 2, like every other command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from forgetlab.cli.console import make_console
from forgetlab.cli.errors import user_errors

console = make_console(stderr=True)


@user_errors()
def report(
    exp_dir: Annotated[
        Path, typer.Argument(help="an experiment directory (holds experiment.json)")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="also print analysis.json to stdout")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and permutation resampling")] = 0,
) -> None:
    """Write analysis.json, report.md, report.html and plots/ into EXP_DIR."""
    from forgetlab.analysis.document import load_analysis, to_json
    from forgetlab.analysis.report import write_report

    paths = write_report(exp_dir, seed=seed)
    analysis = load_analysis(paths["analysis"])
    for run in analysis.runs:
        if run.status == "corrupt":  # listed in the report, never silently left out
            console.print(f"[bold yellow]warning:[/] run {run.run_id}: {run.error}",
                          highlight=False)
    if as_json:
        typer.echo(json.dumps(to_json(analysis), indent=2))
    console.print(
        f"report: [bold]{paths['html']}[/] (also {paths['markdown'].name}, "
        f"{paths['analysis'].name}, {paths['plots'].name}/)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)
