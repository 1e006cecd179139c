"""Causal self-attention (``model.attention``): GPT-2's, optionally grouped-query, with a KV cache
for generation, and the orthogonal frozen Q/K ("OELM", docs/qk_freeze.md) as a sibling class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.initialization import residual_projection
from forgetlab.models.positions import build_rotary
from forgetlab.models.registry import PartRegistry

ATTENTION = PartRegistry("attention")


class KVCache:
    """One layer's keys and values of the tokens seen so far (after rotation), for decoding."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


@ATTENTION.register("standard")
class CausalSelfAttention(nn.Module):
    """Multi-head attention: one fused q/k/v projection, causal SDPA, output projection.

    With ``n_kv_head < n_head`` it is grouped-query attention (Ainslie et al. 2023): each key/value
    head serves ``n_head / n_kv_head`` query heads, so the fused projection is C -> C + 2 * kv_dim
    (3C for plain multi-head, GPT-2's layout). ``scaled_dot_product_attention`` picks the flash /
    memory-efficient kernel where one exists and needs no mask buffer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, self.qkv_width(), bias=cfg.bias)
        self.c_proj = residual_projection(nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias))
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = build_rotary(cfg)

    def qkv_width(self) -> int:
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q (B, T, n_head * hd), k and v (B, T, n_kv_head * hd)."""
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * self.head_dim, kv, kv], dim=2)
        return q, k, v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        # (B, T, heads * hd) -> (B, heads, T, hd)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        past = 0 if cache is None else cache.length
        q, k = self.rotary(q, k, past)
        if cache is not None:
            k, v = cache.append(k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=_cached_causal_mask(T, past, x.device) if past and T > 1 else None,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=past == 0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def _cached_causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """(T, past + T) boolean mask: new token i sees every cached token and new tokens <= i."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def orthogonal_rows(out_features: int, in_features: int, blocks: int) -> torch.Tensor:
    """(out, in) matrix of ``blocks`` row blocks, each with orthonormal rows: the Q factor of the
    QR decomposition of a Gaussian matrix (Saxe et al. 2014's orthogonal init; sign-corrected by
    diag(R) so the draw is Haar-uniform, Mezzadri 2007). ``blocks = 1``: the whole matrix."""
    rows = out_features // blocks
    parts = []
    for _ in range(blocks):
        q, r = torch.linalg.qr(torch.randn(in_features, rows))
        parts.append((q * torch.sign(torch.diagonal(r))).T)
    return torch.cat(parts, dim=0)


@ATTENTION.register("orthogonal")
class OrthogonalAttention(CausalSelfAttention):
    """OELM attention (docs/qk_freeze.md): Q and K projections initialised orthogonal and, with
    ``model.freeze_qk``, stored as buffers so no optimizer ever sees them (the ELM idea of a fixed
    random projection; frozen Q/K save their weight gradients, see ``flops.py``).

    ``model.qk_init = "per_head"`` draws each head's (head_dim x C) block with orthonormal rows;
    ``"whole"`` draws one (out x C) matrix (square, so fully orthogonal, when out = C). Q/K have no
    bias (a frozen bias would be a constant); V keeps ``model.bias``. Unscaled: an orthonormal row
    preserves the norm of the normalised input.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        C, kv = cfg.n_embd, self.n_kv_head * self.head_dim
        del self.c_attn
        per_head = cfg.qk_init == "per_head"
        with torch.device("cpu"):
            q = orthogonal_rows(C, C, self.n_head if per_head else 1)
            k = orthogonal_rows(kv, C, self.n_kv_head if per_head else 1)
        self.c_v = nn.Linear(C, kv, bias=cfg.bias)
        self.frozen = cfg.freeze_qk
        blocks = (self.n_head, self.n_kv_head) if per_head else (1, 1)
        self.orthogonal_blocks = dict(zip(("q_weight", "k_weight"), blocks, strict=True))
        for name, w in (("q_weight", q), ("k_weight", k)):
            if self.frozen:
                self.register_buffer(name, w)
            else:
                self.register_parameter(name, nn.Parameter(w))

    def frozen_tensor_names(self) -> list[str]:
        """Tensors this module promises never change (checked by ``forgetlab diagnose``)."""
        return ["q_weight", "k_weight"] if self.frozen else []

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return F.linear(x, self.q_weight), F.linear(x, self.k_weight), self.c_v(x)

    def flops_weights(self) -> tuple[int, int]:
        """(matmul weights per token, of which trainable): frozen Q/K still multiply."""
        own = sum(p.numel() for p in self.parameters())
        frozen = self.q_weight.numel() + self.k_weight.numel() if self.frozen else 0
        return own + frozen, own
