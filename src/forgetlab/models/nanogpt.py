"""Import of nanoGPT checkpoints (``ckpt.pt`` from karpathy/nanoGPT's ``train.py``).

The file holds ``model_args`` (n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout)
and ``model`` (the state dict; ``_orig_mod.`` prefixes when it was saved from a
``torch.compile``-d model). nanoGPT uses exact GELU, 4x MLP, tied head and LayerNorm eps 1e-5.
The vocabulary is kept as stored (50304 when nanoGPT padded GPT-2's 50257 for speed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from forgetlab.config import ModelConfig, format_validation_error
from forgetlab.models.checkpoint import load_state_into
from forgetlab.models.errors import ModelLoadError
from forgetlab.models.gpt import GPT
from forgetlab.models.gpt2_names import gpt2_to_forgetlab_state

_COMPILED_PREFIX = "_orig_mod."
_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def read_torch_file(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no arbitrary code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or non-weights pickle
        raise ModelLoadError(f"{str(path)!r} cannot be read as a torch weights file: {e}") from None


def is_nanogpt_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and "model_args" in obj and "model" in obj


def nanogpt_config(model_args: dict[str, Any]) -> ModelConfig:
    args = {k: model_args[k] for k in _MODEL_ARGS if k in model_args}
    try:
        return ModelConfig.model_validate(args)
    except ValidationError as e:
        raise ModelLoadError(
            format_validation_error(e, ModelConfig, f"nanoGPT model_args {model_args} are not a "
                                    "valid model")
        ) from None


def model_from_nanogpt(ckpt: dict[str, Any], source: str) -> GPT:
    """Build the GPT that a loaded nanoGPT checkpoint dict describes, weights included."""
    model = GPT(nanogpt_config(ckpt["model_args"]))
    state = {k.removeprefix(_COMPILED_PREFIX): v for k, v in ckpt["model"].items()}
    return load_state_into(model, gpt2_to_forgetlab_state(state), source).eval()


def load_nanogpt(path: str | Path) -> GPT:
    """Read a nanoGPT ``ckpt.pt``; the model is returned in eval mode."""
    path = Path(path)
    ckpt = read_torch_file(path)
    if not is_nanogpt_checkpoint(ckpt):
        raise ModelLoadError(f"{str(path)!r} is not a nanoGPT checkpoint (no model_args / model)")
    return model_from_nanogpt(ckpt, repr(str(path)))
