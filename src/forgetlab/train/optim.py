"""The optimizer and the token-weighted loss the trainer steps on."""

from __future__ import annotations

import torch

from forgetlab.config import RunConfig
from forgetlab.mechanisms import Batch


def weighted_token_mean(token_loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean loss over tokens; with weights, sum(w * l) / sum(w) (gated-out tokens give no gradient)."""
    if weights is None:
        return token_loss.mean()
    return (token_loss * weights).sum() / weights.sum().clamp_min(1e-8)


def trains_on_tokens(batch: Batch) -> bool:
    """Whether any token of the batch carries loss weight (a gate may have written none)."""
    return batch.weights is None or bool(batch.weights.sum() > 0)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW, decaying matrices only (nanoGPT's grouping), fused where this torch supports it."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)
