"""``forgetlab init``: an editable copy of a shipped (or any) spec, to change and run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forgetlab.cli.errors import user_errors

DEFAULT_SOURCE = "quickstart"


@user_errors()
def init_command(
    name: Annotated[str, typer.Argument(help="the new spec: NAME writes ./NAME.toml")],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="spec to copy: a shipped name or a path (default: NAME when it is a shipped "
            f"spec, else {DEFAULT_SOURCE})",
        ),
    ] = None,
) -> None:
    """Write an editable copy of a spec (never over an existing file); run it with `forgetlab run`."""
    from forgetlab.specs import copy_spec, shipped_spec

    source = from_ or (Path(name).stem if shipped_spec(Path(name).stem) else DEFAULT_SOURCE)
    written = copy_spec(name, source)
    typer.echo(f"wrote {written} (from {source}); edit it, then: forgetlab run {written}")


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
