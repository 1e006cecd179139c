"""The run directory: the contract between a run and everything that reads it.

Layout (what analysis, reports and ``from_pretrained`` rely on)::

    RUN_DIR/
      run.json            config, domains, R matrices, unigram baselines, metrics, flops, tokens,
                          timing, peak_memory, env, status (running | finished | failed)
      curves.parquet      step, stage, stage_step, train_loss, lr, tokens_per_s, in-stage eval points
      checkpoints/
        step-00000120/    model.safetensors + trainer.pt (optimizer, RNG, cursor, R, mechanism
                          state) + wallclock.pt (timings, curves) + checkpoint.json (sha256s)
        latest -> step-00000120
      tb/                 TensorBoard event files (train.loggers: tensorboard, the default)
      metrics.csv         step,key,value rows (train.loggers: csv)
      loggers.json        the W&B / MLflow run ids a resumed run logs into again
      wandb/              W&B's files, unless WANDB_DIR says elsewhere (train.loggers: wandb)
      .lock               while a process writes the run (:mod:`forgetlab.locks`)

Every file is written atomically; a finished run is never overwritten. A run.json that cannot be
parsed (truncated by hand or by a broken disk) is never read as "no run": every reader gets a
:class:`RunDirError` naming it, and a re-run rebuilds it from the newest intact checkpoint. One process
at a time writes a run directory: the trainer locks it before reading anything, and then
removes the temp files a killed predecessor left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from forgetlab.atomic import atomic_write, atomic_write_json, is_temp, remove_stale_temps
from forgetlab.config import ConfigError, RunConfig
from forgetlab.locks import LOCK_FILE, DirectoryLock

RUN_JSON = "run.json"
CURVES = "curves.parquet"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
TENSORBOARD = "tb"
LOGGERS_CSV = "metrics.csv"
LOGGERS_STATE = "loggers.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
CORRUPT = "corrupt"
"""The status readers give a run whose run.json cannot be parsed."""


class RunDirError(ConfigError):
    """A run directory's record or checkpoints are unreadable: names the path and what to do."""


log = logging.getLogger("forgetlab.train")


HASH_EXCLUDED = {"train": {"loggers"}}
"""Config keys that never change a number, left out of the run id: adding a logger to a finished
study does not re-run it, and a run resumes under another list of loggers."""


def config_hash(cfg: RunConfig) -> str:
    """Stable short id of a resolved config (same config -> same id on every machine).

    Fields at their default value are left out, so a forgetlab version that adds a config field
    (with a default that keeps the old behaviour) keeps every existing run id: a study resumed
    after an upgrade does not re-run its finished runs. A value set away from its default, a
    preset's expansion included, always counts."""
    dump = cfg.model_dump(mode="json", exclude_defaults=True, exclude=HASH_EXCLUDED)
    canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class RunDir:
    """Paths of one run directory and the rules for (re)using it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def curves(self) -> Path:
        return self.root / CURVES

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def read(self) -> dict[str, Any] | None:
        """The run record, None when there is none; :class:`RunDirError` when it is unreadable."""
        try:
            text = self.run_json.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise self._corrupt(e) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise self._corrupt(e) from None
        if not isinstance(data, dict) or "status" not in data:
            raise self._corrupt(ValueError("no 'status' field"))
        return data

    def _corrupt(self, cause: Exception) -> RunDirError:
        return RunDirError(
            f"{str(self.run_json)!r} is not a readable run record ({cause}): truncated or corrupt. "
            f"Running the same spec (or its study) again rebuilds it: it resumes the run from its "
            f"newest intact checkpoint, or starts the run again when it has none"
        )

    def status(self) -> str | None:
        """running | finished | failed, ``corrupt`` for an unreadable run.json, None if none."""
        try:
            data = self.read()
        except RunDirError:
            return CORRUPT
        return None if data is None else data.get("status")

    def checkpoint_dirs(self) -> list[Path]:
        """Every complete checkpoint directory, newest first."""
        if not self.checkpoints.is_dir():
            return []
        steps = [p for p in self.checkpoints.glob("step-*") if (p / TRAINER_FILE).exists()]
        return sorted(steps, reverse=True)

    def lock(self, wait: float = 0.0) -> DirectoryLock:
        """The run directory's writer lock (not yet acquired); ``wait``: seconds to retry."""
        return DirectoryLock(self.root, "run directory", wait)

    def claim(self, lock: DirectoryLock, cfg: RunConfig, owner: bool = True) -> bool:
        """Take ``lock`` (when this process is the ``owner``, e.g. torchrun's rank 0), remove what
        a killed writer left half-written, and decide whether ``cfg`` resumes here (again, under
        the lock: the directory may have changed since it was first checked)."""
        if owner:
            lock.acquire()
        try:
            if lock.held:
                removed, freed = remove_stale_temps(self.root)
                if removed:
                    log.info(
                        "%s: removed %d temp file(s) a killed run left (%.1f MB)",
                        self.root, removed, freed / 1e6,
                    )
            return self.check_usable(cfg)
        except BaseException:
            lock.release()
            raise

    def has_checkpoint(self) -> bool:
        return bool(self.checkpoint_dirs()) or (self.latest / TRAINER_FILE).exists()

    def check_usable(self, cfg: RunConfig) -> bool:
        """Decide whether a run may start here; returns True when it should resume.

        A finished run is never overwritten. A run that stopped (killed or failed) resumes from its
        last checkpoint, but only with the same config: anything else would mix two experiments.
        A run that failed before its first checkpoint kept nothing trained, so it may be started
        again with another config (the corrected command after a failure); its files are
        replaced.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(
                f"--out {str(self.root)!r} is a file, not a directory; choose a new or empty "
                "directory"
            )
        try:
            existing = self.read()
        except RunDirError as e:
            return self._resume_corrupt(cfg, e)
        if existing is None:
            if self.root.exists() and any(
                p.name != LOCK_FILE and not is_temp(p.name) for p in self.root.iterdir()
            ):
                raise ConfigError(
                    f"--out {str(self.root)!r} exists and is not a forgetlab run directory; "
                    "choose an empty or new directory"
                )
            return False
        if existing.get("status") == "finished":
            raise ConfigError(
                f"--out {str(self.root)!r} holds a finished run (config {existing.get('config_hash')}); "
                "it is never overwritten: choose another --out"
            )
        if existing.get("config_hash") != config_hash(cfg):
            if existing.get("status") == "failed" and not self.has_checkpoint():
                log.warning(
                    "%s: replacing a run that failed before its first checkpoint (config %s) by "
                    "config %s", self.root, existing.get("config_hash"), config_hash(cfg)
                )
                self.discard_attempt()
                return False
            raise ConfigError(
                f"--out {str(self.root)!r} holds an unfinished run with another config "
                f"({existing.get('config_hash')} != {config_hash(cfg)}); resume it with the same "
                "spec and overrides, or choose another --out"
            )
        return self.has_checkpoint()

    def discard_attempt(self) -> None:
        """Remove what an attempt without a checkpoint wrote (its record, curves and loggers'
        files), so that the next attempt's files are not mixed with it."""
        self.run_json.unlink(missing_ok=True)
        self.curves.unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard, ignore_errors=True)
        (self.root / LOGGERS_CSV).unlink(missing_ok=True)
        (self.root / LOGGERS_STATE).unlink(missing_ok=True)  # the next attempt: new W&B/MLflow runs

    def _resume_corrupt(self, cfg: RunConfig, error: RunDirError) -> bool:
        """An unreadable run.json: resume from the checkpoints (they hold R, curves and flops, so
        the record is rebuilt exactly) when they belong to this config; refuse when they belong
        to another. Without a checkpoint nothing trained is kept, so, as for a run that failed
        before its first checkpoint, the attempt's files are replaced by a fresh start."""
        from forgetlab.train.checkpoint import checkpoint_config_hash

        if not self.has_checkpoint():
            log.warning("%s is unreadable and the run has no checkpoint; starting it again",
                        self.run_json)
            self.discard_attempt()
            return False
        stored = checkpoint_config_hash(self.checkpoint_dirs()[0])
        if stored != config_hash(cfg):
            raise RunDirError(
                f"{error}; its checkpoints hold another config ({stored} != {config_hash(cfg)})"
            ) from None
        log.warning("%s is unreadable; resuming from the checkpoints to rebuild it", self.run_json)
        return True

    def write_run_json(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.run_json, data)

    def write_curves(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows)
        atomic_write(self.curves, lambda p: frame.to_parquet(p, index=False))
