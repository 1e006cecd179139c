"""State-dict key names shared by nanoGPT and Hugging Face GPT-2, and forgetlab's equivalents.

Both use ``transformer.{wte,wpe,h.N,ln_f}`` and ``lm_head``; forgetlab names the same tensors
``wte``, ``positions.wpe``, ``blocks.N`` (``mlp`` -> ``ffn``), ``ln_f``, ``lm_head``. Only the
GPT-2 parts (standard attention, GELU MLP, LayerNorm, learned positions) have this mapping.
"""

from __future__ import annotations

import re

import torch

# Causal-mask buffers some GPT-2 implementations store; SDPA needs none.
_MASK_BUFFER = re.compile(r"\.attn\.(bias|masked_bias)$")
_BLOCK = re.compile(r"^h\.(\d+)\.")


def is_mask_buffer(key: str) -> bool:
    return _MASK_BUFFER.search(key) is not None


def gpt2_to_forgetlab_key(key: str) -> str:
    """``[transformer.]h.3.mlp.c_fc.weight`` -> ``blocks.3.ffn.c_fc.weight``, and so on."""
    key = key.removeprefix("transformer.")
    if key.startswith("wpe."):
        return "positions." + key
    if _BLOCK.match(key):
        return _BLOCK.sub(r"blocks.\1.", key).replace(".mlp.", ".ffn.")
    return key


def forgetlab_to_gpt2_key(key: str) -> str:
    """Inverse of :func:`gpt2_to_forgetlab_key`, always with the ``transformer.`` prefix."""
    if key.startswith("lm_head."):
        return key
    if key.startswith("positions.wpe."):
        return "transformer." + key.removeprefix("positions.")
    if key.startswith("blocks."):
        return "transformer.h." + key.removeprefix("blocks.").replace(".ffn.", ".mlp.")
    return "transformer." + key


def gpt2_to_forgetlab_state(
    state: dict[str, torch.Tensor], transpose: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Rename a GPT-2 state dict to forgetlab keys, dropping mask buffers.

    ``transpose`` lists weight suffixes stored (in, out) as Hugging Face ``Conv1D`` does; they are
    transposed to ``nn.Linear``'s (out, in).
    """
    out = {}
    for key, value in state.items():
        if is_mask_buffer(key):
            continue
        if value.ndim == 2 and key.endswith(transpose):
            value = value.t()
        out[gpt2_to_forgetlab_key(key)] = value.contiguous()
    return out
