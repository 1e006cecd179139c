"""Position-wise feed-forward networks (``model.ffn``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.initialization import residual_projection
from forgetlab.models.registry import PartRegistry

FFN = PartRegistry("ffn")

# ModelConfig.activation -> torch's GELU ``approximate`` argument. "gelu_tanh" is GPT-2's original
# activation (Hugging Face "gelu_new"); nanoGPT uses the exact erf form.
_GELU_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}


@FFN.register("mlp")
class MLP(nn.Module):
    """GPT-2 MLP: widen to ``d_ff`` (default 4 * n_embd), GELU, project back to the residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias)
        self.gelu = nn.GELU(approximate=_GELU_APPROXIMATE[cfg.activation])
        self.c_proj = residual_projection(nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=cfg.bias))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


@FFN.register("swiglu")
class SwiGLU(nn.Module):
    """SwiGLU FFN (Shazeer 2020, "GLU Variants Improve Transformer"): down(silu(gate(x)) * up(x)),
    as in LLaMA and MiniMind. Three matrices, so the preset picks ``d_ff`` (MiniMind: 1408 for
    width 512, about 8/3 * 512 rounded to a multiple of 64) to match an MLP's parameters."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias)
        self.w_up = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias)
        self.c_proj = residual_projection(nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=cfg.bias))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.w_gate(x)) * self.w_up(x)))
