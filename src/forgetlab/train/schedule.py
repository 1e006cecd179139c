"""The step schedule: the learning rate (linear warmup then cosine decay, optionally re-warmed at
every stage) and the in-stage points where the trainer logs, evaluates and checkpoints.

Pure functions of the step, so a resumed run needs no scheduler state to continue exactly.
"""

from __future__ import annotations

import math

from forgetlab.config import TrainConfig


def lr_at(cfg: TrainConfig, stage: int, step_in_stage: int, n_stages: int) -> float:
    """Learning rate for the optimizer step about to be taken.

    With ``rewarm`` every stage runs its own warmup + cosine over ``steps_per_stage`` (the re-warming
    of continual pre-training, Gupta et al. 2023); without it one schedule spans the whole stream.
    """
    if cfg.rewarm:
        step, total = step_in_stage, cfg.steps_per_stage
    else:
        step, total = stage * cfg.steps_per_stage + step_in_stage, cfg.steps_per_stage * n_stages
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    decay_steps = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# When, within a stage, the trainer logs, evaluates and checkpoints; ``done`` counts the stage's
# optimizer steps taken so far. The stage's last step is always logged; its evaluation and its
# checkpoint are the stage end's, so the in-stage gates skip it.


def log_due(cfg: TrainConfig, done: int) -> bool:
    """A curve row of training statistics after this step."""
    return done % cfg.log_every == 0 or done == cfg.steps_per_stage


def eval_due(cfg: TrainConfig, done: int) -> bool:
    """An in-stage evaluation of the new domain after this step (``eval_every``)."""
    return bool(cfg.eval_every) and done % cfg.eval_every == 0 and done < cfg.steps_per_stage


def checkpoint_due(cfg: TrainConfig, global_step: int, done: int) -> bool:
    """A mid-stage checkpoint after this step (``checkpoint_every`` counts global steps)."""
    return (
        bool(cfg.checkpoint_every)
        and global_step % cfg.checkpoint_every == 0
        and done < cfg.steps_per_stage
    )
