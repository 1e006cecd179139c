"""Position information (``model.positions``).

A positions part does two things, so that both additive and rotary schemes fit one interface:
``forward(x)`` acts on the token embeddings at the input (learned positions add a vector per
position), and its ``rotary`` class is instantiated inside every attention layer to act on
queries and keys (identity for learned positions; RoPE would rotate them).
"""

from __future__ import annotations

import torch
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.registry import PartRegistry

POSITIONS = PartRegistry("positions")


class NoRotation(nn.Module):
    """Leaves queries and keys as they are: the position is already in the residual stream."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


@POSITIONS.register("learned")
class LearnedPositions(nn.Module):
    """GPT-2's learned absolute position embeddings, added to the token embeddings."""

    rotary: type[nn.Module] = NoRotation

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.size(1), device=x.device)
        return x + self.wpe(pos)


def build_rotary(cfg: ModelConfig) -> nn.Module:
    """The query/key transform an attention layer applies for ``cfg.positions``."""
    return POSITIONS.get(cfg.positions).rotary(cfg)
