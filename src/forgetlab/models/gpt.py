"""The GPT: token embedding -> positions -> pre-norm blocks -> final norm -> (tied) LM head.

Reads in the order a tensor travels, like nanoGPT's ``model.py``. Every swappable part comes from
its registry (attention, FFN, norm, positions), keyed by the config, so variants are sibling
classes of the parts and this file does not change when one is added.
"""

from __future__ import annotations

import torch
from torch import nn

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models.attention import ATTENTION
from forgetlab.models.ffn import FFN
from forgetlab.models.initialization import init_gpt2_
from forgetlab.models.norms import NORM
from forgetlab.models.positions import POSITIONS


class Block(nn.Module):
    """One transformer block with pre-normalisation: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = NORM.build(cfg)
        self.attn = ATTENTION.build(cfg)
        self.ln_2 = NORM.build(cfg)
        self.ffn = FFN.build(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.ffn(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2-style decoder. ``forward`` returns logits only: the trainer computes per-token losses
    itself, because mechanisms re-weight tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ConfigError(
                "model.vocab_size = None: the GPT needs a vocabulary size; set it or build with "
                "build_model(cfg, vocab_size=...)"
            )
        self.config = cfg.model_copy(deep=True)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.positions = POSITIONS.build(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = NORM.build(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # Weight tying (Press & Wolf 2017), as in GPT-2 and nanoGPT: one matrix, two uses.
            self.lm_head.weight = self.wte.weight
        init_gpt2_(self, cfg.n_layer)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) hidden state after the final norm."""
        seq_len = idx.size(1)
        if seq_len > self.config.block_size:
            raise ValueError(
                f"sequence length {seq_len} exceeds model.block_size = {self.config.block_size}"
            )
        x = self.drop(self.positions(self.wte(idx)))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) final hidden state -> (B, T, V) logits."""
        return self.lm_head(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits."""
        return self.logits_from_hidden(self.hidden(idx))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters (not buffers), tied weights counted once.

        ``exclude_embeddings`` follows nanoGPT's ``get_num_params(non_embedding=True)``: it drops
        the lookup tables that do no matmul, i.e. the position embeddings, and the token embedding
        unless it is tied to the LM head (then it is the head's weight and does compute).
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for p in self.positions.parameters())
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n


def build_model(cfg: ModelConfig, vocab_size: int | None = None) -> GPT:
    """A freshly initialised GPT; ``vocab_size`` fills ``cfg.vocab_size`` when that is None."""
    if vocab_size is not None:
        if cfg.vocab_size is not None and cfg.vocab_size != vocab_size:
            raise ConfigError(
                f"model.vocab_size = {cfg.vocab_size} but vocab_size = {vocab_size} was also "
                "given (e.g. from the tokenizer); they must agree"
            )
        cfg = ModelConfig.model_validate({**cfg.model_dump(), "vocab_size": vocab_size})
    return GPT(cfg)
