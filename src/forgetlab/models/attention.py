"""Causal self-attention (``model.attention``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models.initialization import residual_projection
from forgetlab.models.positions import build_rotary
from forgetlab.models.registry import PartRegistry

ATTENTION = PartRegistry("attention")


@ATTENTION.register("standard")
class CausalSelfAttention(nn.Module):
    """GPT-2 multi-head attention: one fused q/k/v projection, causal SDPA, output projection.

    ``scaled_dot_product_attention(is_causal=True)`` picks the flash / memory-efficient kernel
    where one exists and needs no mask buffer, so the state dict holds weights only.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.n_kv_head not in (None, cfg.n_head):
            raise ConfigError(
                f"model.n_kv_head = {cfg.n_kv_head} needs grouped-query attention; "
                f"model.attention = 'standard' has one key/value head per query head "
                f"(allowed n_kv_head: None or {cfg.n_head})"
            )
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = residual_projection(nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias))
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = build_rotary(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = self.rotary(q, k)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))
