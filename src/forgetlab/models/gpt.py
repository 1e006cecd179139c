"""The GPT: token embedding -> positions -> pre-norm blocks -> final norm -> (tied) LM head.

Reads in the order a tensor travels, like nanoGPT's ``model.py``. Every swappable part comes from
its registry (attention, FFN, norm, positions, sparsity), keyed by the config, so variants are
sibling classes of the parts and this file does not change when one is added. Parts talk back to
the trainer through three duck-typed, variant-free channels: ``aux`` (auxiliary losses of the last
forward, e.g. MoE balance), ``stats()`` (scalars to log, e.g. per-expert load) and the sparsity
part's ``reapply`` after every optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models import memory, moe  # noqa: F401  (registers the "memory" and "moe" FFNs)
from forgetlab.models.attention import ATTENTION, KVCache
from forgetlab.models.ffn import FFN
from forgetlab.models.initialization import init_gpt2_
from forgetlab.models.norms import NORM
from forgetlab.models.positions import POSITIONS
from forgetlab.models.sparsity import SPARSITY


class Block(nn.Module):
    """One transformer block with pre-normalisation: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = NORM.build(cfg)
        self.attn = ATTENTION.build(cfg, layer)
        self.ln_2 = NORM.build(cfg)
        self.ffn = FFN.build(cfg, layer)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
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
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = NORM.build(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # Weight tying (Press & Wolf 2017), as in GPT-2 and nanoGPT: one matrix, two uses.
            self.lm_head.weight = self.wte.weight
        init_gpt2_(self, cfg.n_layer)
        self.sparsity = SPARSITY.build(cfg)
        self.sparsity.attach(self)  # masks are chosen on the initialised weights

    def hidden(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) hidden state after the final norm. With ``caches`` (one
        per block) the ids continue the cached sequence and the caches grow by T."""
        start = 0 if caches is None else caches[0].length
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(
                f"sequence length {start + idx.size(1)} exceeds model.block_size = "
                f"{self.config.block_size}"
            )
        x = self.drop(self.positions(self.wte(idx), start))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) final hidden state -> (B, T, V) logits."""
        return self.lm_head(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits."""
        return self.logits_from_hidden(self.hidden(idx))

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary loss terms of the last forward (e.g. MoE balance and z-loss), summed over
        layers by name; the trainer adds them to the objective. Empty for most models."""
        out: dict[str, torch.Tensor] = {}
        for module in self.modules():
            for name, value in getattr(module, "aux", {}).items():
                out[name] = out[name] + value if name in out else value
        return out

    def stats(self) -> dict[str, float]:
        """Scalars of the last forward for the curves (e.g. per-expert load), averaged over
        the layers that report them."""
        rows = [m.stats() for m in self.modules() if m is not self and hasattr(m, "stats")]
        keys = {k for row in rows for k in row}
        return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}

    def after_optimizer_step(self) -> None:
        """Keep fixed sparsity masks exact after the optimizer moved the weights."""
        self.sparsity.reapply(self)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue (B, T) ids by ``max_new_tokens`` sampled tokens; ``temperature = 0`` is greedy.

        With ``use_cache`` each step feeds only the new token and reuses every layer's keys and
        values; once the context fills ``block_size`` the window slides and every step recomputes
        the cropped window (absolute positions shift). Greedy results equal recomputation.
        """
        was_training = self.training
        self.eval()
        caches: list[KVCache] | None = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self(idx[:, -self.config.block_size :])[:, -1]
            else:
                if caches is None or caches[0].length >= self.config.block_size:
                    caches = [KVCache() for _ in self.blocks]
                    fed = idx[:, -self.config.block_size :]
                else:
                    fed = idx[:, caches[0].length :]
                logits = self.logits_from_hidden(self.hidden(fed, caches))[:, -1]
            idx = torch.cat((idx, _sample(logits, temperature, top_k, generator)), dim=1)
        self.train(was_training)
        return idx

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


def _sample(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) ids: argmax at temperature 0, else softmax sampling over the
    ``top_k`` most likely tokens (all when None)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


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
