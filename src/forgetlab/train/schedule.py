"""Learning-rate schedule: linear warmup then cosine decay, optionally re-warmed at every stage.

A pure function of the step, so a resumed run needs no scheduler state to continue exactly.
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
