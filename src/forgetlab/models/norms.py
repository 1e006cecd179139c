"""Normalisation layers (``model.norm``). GPT-2 uses pre-LayerNorm: one before attention, one
before the FFN, one after the last block."""

from __future__ import annotations

from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.registry import PartRegistry

NORM = PartRegistry("norm")


@NORM.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """LayerNorm over the model width, with a bias only when ``model.bias`` (nanoGPT's option)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


@NORM.register("rmsnorm")
class RMSNorm(nn.RMSNorm):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * g, no centring, no bias; the
    LLaMA / MiniMind choice."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.n_embd, eps=cfg.norm_eps)
