"""One run from a resolved config to its finished run directory: what ``forgetlab run SPEC`` and
``forgetlab.run(...)`` both do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetlab.config import RunConfig

RESULTS = Path("results")


def default_run_dir(cfg: RunConfig) -> Path:
    """Where a run goes without ``--out``: ``results/<name>``."""
    return RESULTS / cfg.name


def train_run(cfg: RunConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Validate the mechanisms, refuse a finished run directory, prepare the data, train; the
    returned dict is the finished run.json. Every refusal comes before any work."""
    from forgetlab.data import prepare_run
    from forgetlab.train.trainer import Trainer

    # checks each mechanism's knobs and fit to the run, and the run directory, before any work
    trainer = Trainer(cfg, out or default_run_dir(cfg), progress=progress)
    prepare_run(cfg.data, progress=progress)
    return trainer.run()
