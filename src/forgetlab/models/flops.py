"""Per-token training FLOPs from the model shape (the model part of the FLOPs accountant).

Dense baseline: train = 6 * N + 12 * L * H * Q * T per token (PaLM, Chowdhery et al. 2022,
appendix B; nanoGPT's ``GPT.estimate_mfu``): 2N forward, 2N backward for the activation gradients,
2N for the weight gradients, and 12 L H Q T for attention's QK^T and AV products (4 L H Q T forward,
twice that backward), with L layers, H query heads, Q head width, T the context length. N is
nanoGPT's ``get_num_params(non_embedding=True)`` (:meth:`GPT.num_params` with
``exclude_embeddings=True``): position embeddings and an untied token embedding are lookups.

Variants change the weights a token multiplies (A) and those that get weight gradients (W):
forward = 2A + 4LHQT, backward = 2A + 2W + 8LHQT. A part with its own count defines
``flops_weights() -> (A, W)`` and replaces its parameters' contribution:
* MoE: the router(s) and ``top_k`` experts, not all E (FLOPs stay flat as Lifelong-MoE grows E);
* memory layer: gate, 2 sqrt(N) half-key scores, the k * L gathered rows twice, projections;
* orthogonal frozen Q/K: they still multiply forward and pass activation gradients backward, but
  need no weight gradient, saving 2 * (|Q| + |K|) per token (W < A);
* GQA needs nothing special: the smaller K/V projections are in N, the score terms use H.
Sparsity: ``train_dense`` is what the masked dense path executes, and it is ``train``, the number
budgets match on (the compute actually spent); ``train_effective`` scales the masked linear weights
by their density, what a sparse kernel would execute.
"""

from __future__ import annotations

import torch
from torch import nn

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models.gpt import GPT


def flops_params(cfg: ModelConfig) -> int:
    """N for the 6N term, counted on a weightless (meta-device) model so every variant is exact."""
    return _meta_model(cfg).num_params(exclude_embeddings=True)


def _meta_model(cfg: ModelConfig) -> GPT:
    if cfg.vocab_size is None:
        raise ConfigError("model.vocab_size = None: FLOPs need the vocabulary size; set it first")
    with torch.device("meta"):
        return GPT(cfg)


def matmul_weights(model: GPT) -> tuple[int, int, int]:
    """(A, W, masked-away weights): multiply-adds per token, of which get weight gradients, and
    how many of A a fixed sparsity mask zeroes."""
    active = trainable = model.num_params(exclude_embeddings=True)
    for module in model.modules():
        counted = getattr(module, "flops_weights", None)
        if counted is not None:
            own = sum(p.numel() for p in module.parameters())
            a, w = counted()
            active, trainable = active + a - own, trainable + w - own
    masked = sum(
        m.weight.numel() - model.sparsity.kept(m.weight.shape)
        for m in model.modules()
        if isinstance(m, nn.Linear) and hasattr(m, "weight_mask")
    )
    return active, trainable, masked


def model_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """``{"forward", "backward", "train", "train_dense", "train_effective"}`` FLOPs per token at
    context ``seq_len`` (default ``cfg.block_size``)."""
    T = cfg.block_size if seq_len is None else seq_len
    active, trainable, masked = matmul_weights(_meta_model(cfg))
    attention = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * T
    forward = 2 * active + attention
    backward = 2 * active + 2 * trainable + 2 * attention
    train = forward + backward
    return {
        "forward": forward,
        "backward": backward,
        "train": train,
        "train_dense": train,
        "train_effective": train - 6 * masked,
    }
