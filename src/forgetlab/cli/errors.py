"""The command line's one error boundary: a user's mistake is one line and exit code 2.

Every command is wrapped in :func:`user_errors` (as a decorator, or around part of its body). Any
:class:`~forgetlab.config.ForgetlabError` (a bad spec, override, data source, checkpoint path...)
is printed as ``error: MESSAGE`` on one stderr line, with no traceback, and the command exits with
:data:`USER_ERROR_EXIT`. A run that failed for a reason it explains itself (divergence, a full
disk) is one line too, with :data:`RUN_FAILED_EXIT`. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from forgetlab.config import ForgetlabError

USER_ERROR_EXIT = 2
RUN_FAILED_EXIT = 1


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`ForgetlabError` into ``error: MESSAGE`` on stderr and exit code 2."""
    try:
        yield
    except ForgetlabError as e:
        typer.echo(f"error: {one_line(e)}", err=True)
        raise typer.Exit(USER_ERROR_EXIT) from None
    except Exception as e:
        from forgetlab.atomic import DiskFullError
        from forgetlab.train.failures import DivergenceError

        if not isinstance(e, DivergenceError | DiskFullError):
            raise
        typer.echo(f"error: {one_line(e)}", err=True)  # run.json records it as failed
        raise typer.Exit(RUN_FAILED_EXIT) from None


def one_line(error: BaseException) -> str:
    """The error's message on one line (a message spread over lines is joined with spaces)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())
