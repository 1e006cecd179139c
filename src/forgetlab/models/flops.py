"""Per-token training FLOPs from the model shape (the model part of the FLOPs accountant).

train = 6 * N + 12 * L * H * Q * T per token (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's
``GPT.estimate_mfu``): 6N for the forward (2N) and backward (4N) matmuls with the weights, and
12 L H Q T for attention's QK^T and AV products (2 * 2 * L * H * Q * T forward, twice that
backward), with L layers, H heads, Q head width and T the context length.

N is nanoGPT's: ``get_num_params(non_embedding=True)``, all parameters except position embeddings
(a lookup, no multiply). The token embedding stays in because, tied, it is the LM head's weight,
a V x C matmul per token (nanoGPT's docstring says exactly this). With an untied head the token
embedding is a pure lookup and is left out too. This is :meth:`GPT.num_params` with
``exclude_embeddings=True``. forward = train / 3 and backward = 2 * train / 3 (backward costs two
forwards: gradients with respect to activations and to weights).
"""

from __future__ import annotations

import torch

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models.gpt import GPT


def flops_params(cfg: ModelConfig) -> int:
    """N for the 6N term, counted on a weightless (meta-device) model so every variant is exact."""
    if cfg.vocab_size is None:
        raise ConfigError("model.vocab_size = None: FLOPs need the vocabulary size; set it first")
    with torch.device("meta"):
        return GPT(cfg).num_params(exclude_embeddings=True)


def model_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """``{"forward", "backward", "train"}`` FLOPs per token at context ``seq_len`` (default
    ``cfg.block_size``)."""
    T = cfg.block_size if seq_len is None else seq_len
    train = 6 * flops_params(cfg) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T
    forward = train // 3
    return {"forward": forward, "backward": train - forward, "train": train}
