"""Why a run stopped on its own: the errors a run ends with as ``failed``, each a one-line message
with what to do, and the structured fields run.json records for the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetlab.atomic import DiskFullError, is_disk_full
from forgetlab.config import ForgetlabError


class LoggerError(ForgetlabError):
    """A logger in ``train.loggers`` could not start (a tracking server refused, a directory it
    cannot write): the run stops before its first training step, so nothing is lost."""

    def __init__(self, logger: str, message: str) -> None:
        self.details: dict[str, Any] = {"kind": "logger", "logger": logger}
        super().__init__(message)


class DivergenceError(RuntimeError):
    """A non-finite loss, gradient norm, weight or evaluation: training cannot go on meaningfully.

    ``step`` is the global optimizer step (1-based) at which the value first went non-finite,
    ``stage`` the 0-based stage, ``checkpoint`` the newest checkpoint on disk (every checkpoint is
    checked finite when written), from which a changed run cannot resume (its config differs) but
    whose weights can be inspected.
    """

    def __init__(self, what: str, value: float | str, step: int, stage: int, domain: str,
                 stage_step: int, checkpoint: Path | None, lr: float, when: str = "at") -> None:
        self.details: dict[str, Any] = {
            "kind": "divergence",
            "what": what,
            "value": str(value),
            "step": step,
            "stage": stage,
            "domain": domain,
            "stage_step": stage_step,
            "checkpoint": str(checkpoint) if checkpoint else None,
        }
        where = f"{when} step {step} (stage {stage + 1} '{domain}', step {stage_step} of the stage)"
        last = str(checkpoint) if checkpoint else "none (no checkpoint was written yet)"
        super().__init__(
            f"training diverged: {what} is {value} {where}; last finite checkpoint: {last}; "
            f"lower train.lr (now {lr:g}) or set train.grad_clip"
        )

    @classmethod
    def in_run(cls, what: str, value: float | str, *, done: int, stage: int, domain: str,
               step: int, checkpoint: Path | None, lr: float, after: bool = False
               ) -> DivergenceError:
        """The error for ``what`` going non-finite in the optimizer step now running (``step``,
        0-based in the stage, after ``done`` steps of the run), or, ``after`` (an evaluation, a
        weight check), after the last step done (step 0 before training)."""
        return cls(
            what,
            value,
            step=done if after else done + 1,
            stage=stage,
            domain=domain,
            stage_step=(step + 1 if done else 0) if after else step + 1,
            checkpoint=checkpoint,
            lr=lr,
            when="after" if after else "at",
        )


def run_failure(exc: BaseException) -> tuple[str, dict[str, Any]] | None:
    """(one-line message, run.json ``failure`` fields) for a failure the lab explains itself
    (divergence, a full disk); None for anything else, which keeps its traceback."""
    if isinstance(exc, DivergenceError | LoggerError):
        return str(exc), exc.details
    if is_disk_full(exc):
        err = exc if isinstance(exc, DiskFullError) else None
        path = str(err.path) if err else getattr(exc, "filename", None)
        return (str(err) if err else f"no space left on the device ({exc})"), {
            "kind": "disk_full", "path": path}
    return None
