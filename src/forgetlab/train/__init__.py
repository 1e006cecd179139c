"""Training: the continual trainer, evaluation, FLOPs accounting, checkpoints and the run directory."""

from forgetlab.train.rundir import RunDir, RunDirError, config_hash
from forgetlab.train.trainer import Trainer

__all__ = ["RunDir", "RunDirError", "Trainer", "config_hash"]
