"""GPT-2 initialisation, as in nanoGPT's ``GPT._init_weights`` and GPT-2 paper section 2.3.

Linear and Embedding weights ~ N(0, 0.02), biases zero; residual projections (the layers whose
output is added to the residual stream) ~ N(0, 0.02 / sqrt(2 * n_layer)) so that the residual
stream's variance does not grow with depth (two residual additions per block). Parts mark their
residual projections with :func:`residual_projection`, so new variants get the scaling by
marking, not by a name pattern in the GPT class.
"""

from __future__ import annotations

import math

from torch import nn

_RESIDUAL_FLAG = "forgetlab_residual_projection"
INIT_STD = 0.02


def residual_projection(layer: nn.Linear) -> nn.Linear:
    """Mark ``layer`` as writing into the residual stream (scaled init); returns it unchanged."""
    setattr(layer, _RESIDUAL_FLAG, True)
    return layer


def is_residual_projection(module: nn.Module) -> bool:
    return bool(getattr(module, _RESIDUAL_FLAG, False))


def init_gpt2_(model: nn.Module, n_layer: int) -> None:
    """Initialise every Linear and Embedding of ``model`` in place, GPT-2 style."""
    residual_std = INIT_STD / math.sqrt(2 * n_layer)
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            std = residual_std if is_residual_projection(module) else INIT_STD
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
