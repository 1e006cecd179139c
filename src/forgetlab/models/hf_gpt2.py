"""Hugging Face GPT-2 directories (``config.json`` + weights): import and export.

The files are read and written directly, so ``transformers`` is not needed at run time. GPT-2's
``Conv1D`` layers store weights as (in, out); ``nn.Linear`` wants (out, in), so those four
weights are transposed both ways. Only GPT-2-expressible models are exported: standard or
orthogonal attention without grouped K/V, GELU MLP, LayerNorm, learned positions. What GPT-2
computes the same way is translated: a model without biases is written with zero biases;
document 001's orthogonal Q/K (frozen buffers or trainable) are ordinary Q/K weights to GPT-2, so
``q_weight``, ``k_weight`` and ``c_v`` are fused into ``c_attn`` (zero Q/K biases); a sparse
model's masked weights are already zero, so its ``weight_mask`` buffers are dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from forgetlab.config import ModelConfig
from forgetlab.models.checkpoint import load_state_into, state_dict_to_save
from forgetlab.models.errors import ModelExportError, ModelLoadError
from forgetlab.models.gpt import GPT
from forgetlab.models.gpt2_names import forgetlab_to_gpt2_key, gpt2_to_forgetlab_state
from forgetlab.models.nanogpt import read_torch_file

CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# HF activation_function -> ModelConfig.activation. gelu_new / gelu_fast / gelu_pytorch_tanh are
# all the tanh approximation of GELU (Hendrycks & Gimpel 2016, eq. in section 2).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
_EXPORT_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
_GPT2_PARTS = {"ffn": "mlp", "norm": "layernorm", "positions": "learned"}
_GPT2_ATTENTION = ("standard", "orthogonal")


def is_hf_gpt2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def hf_config_to_model_config(hf: dict[str, Any], source: str) -> ModelConfig:
    """Translate a GPT-2 ``config.json`` dict, refusing options our GPT does not compute."""
    if hf.get("model_type") != "gpt2":
        raise ModelLoadError(f"{source}: model_type = {hf.get('model_type')!r}; only 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ModelLoadError(
            f"{source}: activation_function = {act!r}; allowed: {sorted(_ACTIVATIONS)}"
        )
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ModelLoadError(
            f"{source}: only standard 1/sqrt(head_dim) attention scaling is supported "
            "(scale_attn_weights = true, scale_attn_by_inverse_layer_idx = false)"
        )
    try:
        return ModelConfig(
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=hf.get("n_embd", 768),
            d_ff=hf.get("n_inner"),
            block_size=hf.get("n_positions", 1024),
            vocab_size=hf.get("vocab_size", 50257),
            dropout=hf.get("resid_pdrop", 0.1),
            bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=_ACTIVATIONS[act],
        )
    except ValidationError as e:
        raise ModelLoadError(f"{source}: config.json is not a valid model: {e}") from None


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory: one safetensors file, a sharded index, or a torch .bin."""
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(directory / shard)))
        return state
    if (directory / "pytorch_model.bin").is_file():
        return read_torch_file(directory / "pytorch_model.bin")
    raise ModelLoadError(f"{str(directory)!r} has config.json but none of {list(WEIGHT_FILES)}")


def load_hf_gpt2(directory: str | Path) -> GPT:
    """Read a Hugging Face GPT-2 directory; the model is returned in eval mode."""
    directory = Path(directory)
    source = repr(str(directory))
    if not is_hf_gpt2_dir(directory):
        raise ModelLoadError(f"{source} is not a directory with a config.json")
    try:
        hf = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{source}: config.json is not valid JSON: {e}") from None
    model = GPT(hf_config_to_model_config(hf, source))
    state = gpt2_to_forgetlab_state(read_hf_weights(directory), transpose=CONV1D_WEIGHTS)
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied: the head is the token embedding
    return load_state_into(model, state, source).eval()


def check_exportable(cfg: ModelConfig) -> None:
    wrong = {k: getattr(cfg, k) for k, v in _GPT2_PARTS.items() if getattr(cfg, k) != v}
    if cfg.attention not in _GPT2_ATTENTION:
        wrong["attention"] = cfg.attention
    if cfg.n_kv_head not in (None, cfg.n_head):
        wrong["n_kv_head"] = cfg.n_kv_head
    if wrong:
        raise ModelExportError(
            f"cannot export to Hugging Face GPT-2: model parts {wrong} have no GPT-2 equivalent; "
            f"GPT-2 needs {_GPT2_PARTS}, attention in {list(_GPT2_ATTENTION)} and "
            "n_kv_head = None"
        )


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` of the GPT-2 equivalent of ``cfg``."""
    eos = 50256 if cfg.vocab_size is not None and cfg.vocab_size > 50256 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ffn_hidden,
        "activation_function": _EXPORT_ACTIVATIONS[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def _fuse_orthogonal_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``attn.{q_weight,k_weight}`` + ``attn.c_v`` -> one ``attn.c_attn`` (Q, K, V stacked along
    the output dimension, as GPT-2's split expects); Q/K have no bias, so theirs is zero."""
    out = dict(state)
    for q_key in [k for k in state if k.endswith(".attn.q_weight")]:
        prefix = q_key.removesuffix("q_weight")
        q, k = out.pop(q_key), out.pop(prefix + "k_weight")
        v = out.pop(prefix + "c_v.weight")
        out[prefix + "c_attn.weight"] = torch.cat([q, k, v])
        v_bias = out.pop(prefix + "c_v.bias", None)
        if v_bias is not None:
            zeros = torch.zeros(q.shape[0] + k.shape[0], dtype=v_bias.dtype)
            out[prefix + "c_attn.bias"] = torch.cat([zeros, v_bias])
    return out


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT-2 names, Conv1D-transposed, zero biases where it has none."""
    state = {}
    saved = {k: v for k, v in state_dict_to_save(model).items() if not k.endswith(".weight_mask")}
    for key, value in _fuse_orthogonal_qkv(saved).items():
        if value.ndim == 2 and key.endswith(CONV1D_WEIGHTS):
            value = value.t()
        state[forgetlab_to_gpt2_key(key)] = value.float().contiguous()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, torch.nn.Linear | torch.nn.LayerNorm)
            and module.bias is None
            and name != "lm_head"
            and weight is not None
        ):
            rows = weight.shape[0]
            if name.endswith(".attn.c_v"):  # fused with Q/K above: c_attn's bias spans all three
                name, rows = name.removesuffix("c_v") + "c_attn", 3 * rows
            state[forgetlab_to_gpt2_key(f"{name}.bias")] = torch.zeros(rows)
    return state


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_hf(model: GPT, out_dir: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``GPT2LMHeadModel``."""
    check_exportable(model.config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    tmp = weights.with_name(f".{weights.name}.tmp-{os.getpid()}")
    try:
        # transformers requires the "format" metadata to accept a safetensors file
        save_file(hf_state_dict(model), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)
    _atomic_write_text(out / "config.json", json.dumps(hf_config_dict(model.config), indent=2))
    return out
