"""Training: the continual trainer, evaluation, FLOPs accounting, checkpoints and the run directory.

``Trainer`` is imported on first use, so that readers of run directories (analysis, reports)
do not load PyTorch.
"""

from typing import TYPE_CHECKING, Any

from forgetlab.train.rundir import RunDir, RunDirError, config_hash

if TYPE_CHECKING:
    from forgetlab.train.trainer import Trainer

__all__ = ["RunDir", "RunDirError", "Trainer", "config_hash"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from forgetlab.train.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'forgetlab.train' has no attribute {name!r}")
