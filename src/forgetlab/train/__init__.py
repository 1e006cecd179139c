"""Training: the continual trainer, evaluation, FLOPs accounting, checkpoints and the run directory."""

from forgetlab.train.rundir import RunDir, config_hash
from forgetlab.train.trainer import Trainer

__all__ = ["RunDir", "Trainer", "config_hash"]
