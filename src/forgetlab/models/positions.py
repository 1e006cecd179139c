"""Position information (``model.positions``).

A positions part does two things, so that both additive and rotary schemes fit one interface:
``forward(x, start)`` acts on the token embeddings at the input (learned positions add a vector per
position), and its ``rotary`` class is instantiated inside every attention layer to act on
queries and keys (identity for learned positions; RoPE rotates them). ``start`` is the absolute
position of the first token, non-zero when decoding with a KV cache.
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

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


@POSITIONS.register("learned")
class LearnedPositions(nn.Module):
    """GPT-2's learned absolute position embeddings, added to the token embeddings."""

    rotary: type[nn.Module] = NoRotation

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + x.size(1), device=x.device)
        return x + self.wpe(pos)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer, eq. 34): the pair (x_2i, x_2i+1) of
    every query and key head at position m is rotated by the angle m * theta^(-2i/d).

    The interleaved-pair convention of the paper (and of Meta's LLaMA / MiniMind's complex
    ``pos_cis``), not the half-split one of GPT-NeoX. cos/sin tables are non-persistent buffers:
    recomputed from the config, never stored in checkpoints.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.head_dim
        inv_freq = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)  # (block_size, d/2)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """(B, heads, T, d) -> the same, each pair rotated by its position's angle."""
        T = x.size(-2)
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        pairs = x.float().unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return out.flatten(-2).to(x.dtype)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, start: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(q, start), self.rotate(k, start)


@POSITIONS.register("rope")
class RotaryPositions(nn.Module):
    """RoPE: nothing is added at the input; every attention layer rotates its queries and keys."""

    rotary: type[nn.Module] = Rotary

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x


def build_rotary(cfg: ModelConfig) -> nn.Module:
    """The query/key transform an attention layer applies for ``cfg.positions``."""
    return POSITIONS.get(cfg.positions).rotary(cfg)
