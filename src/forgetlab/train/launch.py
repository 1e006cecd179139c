"""One run from a resolved config to its finished run directory: what ``forgetlab run SPEC`` and
``forgetlab.run(...)`` both do, and what every study worker does (:func:`train_once`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetlab.config import ConfigError, RunConfig

RESULTS = Path("results")


def default_run_dir(cfg: RunConfig) -> Path:
    """Where a run goes without ``--out``: ``results/<name>``."""
    return RESULTS / cfg.name


def train_once(
    cfg: RunConfig, out: str | Path, progress: bool = True, lock_wait: float = 0.0
) -> bool:
    """Train (or resume) ``cfg`` into ``out`` unless it is finished there; returns whether this
    call trained it. Another process writing ``out`` is waited for ``lock_wait`` seconds and then
    refused, unless it finished the run meanwhile (then there is nothing left to do)."""
    from forgetlab.train.rundir import RunDir
    from forgetlab.train.trainer import Trainer

    run_dir = RunDir(out)
    if run_dir.status() == "finished":
        return False
    try:
        Trainer(cfg, out, progress=progress, lock_wait=lock_wait).run()
    except ConfigError:
        if lock_wait and run_dir.status() == "finished":  # by the process this one waited for
            return False
        raise
    return True


def train_run(cfg: RunConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Validate the mechanisms, refuse a finished run directory, prepare the data, train the
    declared base unless cached, train; the returned dict is the finished run.json. Every
    refusal comes before any work."""
    from forgetlab.data import prepare_run
    from forgetlab.train.base_model import ensure_base
    from forgetlab.train.trainer import Trainer

    # checks each mechanism's knobs and fit to the run, and the run directory, before any work
    trainer = Trainer(cfg, out or default_run_dir(cfg), progress=progress)
    prepare_run(cfg.data, progress=progress)
    ensure_base(cfg, progress)
    return trainer.run()
