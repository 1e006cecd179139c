"""Memory layer in place of the FFN (``model.ffn = "memory"``, docs/memory_ffn.md).

A trainable bank of ``knowledge_num`` entries, each ``knowledge_length`` rows of ``knowledge_dim``.
Per token a gate picks ``num_selected`` entries with product keys (Lample et al. 2019; He 2024,
PEER, "Mixture of A Million Experts"): the gate query is split in halves, each half is scored
against sqrt(N) sub-keys, the top-k of each half form k x k candidates whose score is the sum of the
two half scores, and the top-k of those are exactly the top-k of all N entries (a full key of entry
(i, j) is the concatenation of sub-keys i and j), at O(sqrt(N)) instead of O(N) cost.

The token then cross-attends to the selected entries' rows, with the gate's softmax over the k
entries as a prior: attention logit of row l of entry j = q . e_jl / sqrt(D) + log g_j, one
softmax over all k * L rows. The key and value projections are folded into the query and output
projections (q . W_k e = (W_k^T q) . e and sum a W_v e = W_v sum a e), so only the gathered rows
themselves are materialised: (tokens, k, L, D), never the bank per token (the record in
docs/memory_ffn.md needed 20 GB against the baseline's 1.5 GB). Gradients reach bank,
sub-keys and gate.

The layer is position-wise, so a KV cache of the attention layers stays exact: the model generates
with the cache; ``use_cache=False`` gives the earlier record's cache-free generation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.ffn import FFN
from forgetlab.models.initialization import INIT_STD, residual_projection


def product_key_topk(
    q: torch.Tensor, sub_keys: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., dk) queries, (2, n, dk/2) sub-keys -> top-k (scores, entry ids) over n*n entries,
    entry (i, j) having id i * n + j and score q1 . K1_i + q2 . K2_j."""
    n = sub_keys.size(1)
    q1, q2 = q.chunk(2, dim=-1)
    s1, i1 = (q1 @ sub_keys[0].T).topk(k, dim=-1)
    s2, i2 = (q2 @ sub_keys[1].T).topk(k, dim=-1)
    scores = (s1[..., :, None] + s2[..., None, :]).flatten(-2)
    ids = (i1[..., :, None] * n + i2[..., None, :]).flatten(-2)
    best, j = scores.topk(k, dim=-1)
    return best, ids.gather(-1, j)


@FFN.register("memory")
class MemoryLayer(nn.Module):
    """Gate -> product-key top-k entries -> cross-attention over their rows -> output projection."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.memory
        self.k, self.rows, self.dim = m.num_selected, m.knowledge_length, m.knowledge_dim
        n = math.isqrt(m.knowledge_num)
        self.gate = nn.Linear(cfg.n_embd, m.key_dim, bias=False)
        self.sub_keys = nn.Parameter(torch.randn(2, n, m.key_dim // 2) * INIT_STD)
        self.bank = nn.Parameter(torch.randn(m.knowledge_num, self.rows, self.dim) / self.dim**0.5)
        self.query = nn.Linear(cfg.n_embd, self.dim, bias=False)
        self.c_proj = residual_projection(nn.Linear(self.dim, cfg.n_embd, bias=cfg.bias))
        self.dropout = nn.Dropout(cfg.dropout)

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C) -> entry ids (B, T, k) and log gate weights (B, T, k)."""
        scores, ids = product_key_topk(self.gate(x).float(), self.sub_keys.float(), self.k)
        return ids, scores.log_softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, log_gate = self.select(x)
        # Gather only the selected entries: (B, T, k, L * D) through an embedding lookup, whose
        # backward scatters into the bank without a per-token copy of it.
        entries = F.embedding(ids, self.bank.flatten(1)).unflatten(-1, (self.rows, self.dim))
        q = self.query(x)
        logits = torch.einsum("btd,btkld->btkl", q, entries.to(q.dtype)) / self.dim**0.5
        attn = (logits.float() + log_gate[..., None]).flatten(-2).softmax(-1)
        read = torch.einsum("btn,btnd->btd", attn.to(q.dtype), entries.flatten(2, 3).to(q.dtype))
        return self.dropout(self.c_proj(read))

    @torch.no_grad()
    def init_from_embeddings(self, emb: torch.Tensor) -> None:
        """Fill the bank from token embeddings (N, L, C): each entry holds a text window, mapped
        into the row space by the query projection and rescaled to the bank's initial spread."""
        rows = self.query(emb.to(self.query.weight.dtype))
        self.bank.copy_(rows * (self.bank.std() / rows.std().clamp_min(1e-12)))

    def flops_weights(self) -> tuple[int, int]:
        """(multiply-adds per token, trainable): gate, 2 * sqrt(N) half-key scores, the gathered
        k * L rows twice (scores, weighted sum), query and output projections."""
        n, half = self.sub_keys.shape[1:]
        gathered = 2 * self.k * self.rows * self.dim
        own = self.gate.weight.numel() + self.query.weight.numel() + self.c_proj.weight.numel()
        active = own + 2 * n * half + gathered
        return active, active


def init_memory_from_tokens(model: nn.Module, tokens: torch.Tensor) -> int:
    """Initialise every memory layer's bank from a 1-D tensor of token ids (the earlier record's
    "database init"): entry i holds window i of the text (repeated when the text is short),
    embedded by the model's token embedding. Returns the number of layers initialised."""
    layers = [m for m in model.modules() if isinstance(m, MemoryLayer)]
    wte = model.get_submodule("wte")
    for layer in layers:
        n, L = layer.bank.size(0), layer.rows
        need = n * L
        ids = tokens.flatten().repeat(-(-need // tokens.numel()))[:need].view(n, L)
        with torch.no_grad():
            layer.init_from_embeddings(wte(ids.to(layer.bank.device)))
    return len(layers)
