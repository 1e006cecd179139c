"""Hugging Face GPT-2 directories (``config.json`` + weights): import and export.

An export is a directory ``AutoTokenizer``, ``GPT2LMHeadModel`` and ``pipeline("text-generation")``
use as is: weights, ``config.json`` and ``generation_config.json`` with the end-of-text token as
bos/eos, and, given the run's tokenizer, its files (``tokenizer.json`` + a ``GPT2Tokenizer``
config, plus the slow tokenizer's ``vocab.json``/``merges.txt``) and a model card.
The files are read and written directly, so ``transformers`` is not needed at run time. GPT-2's
``Conv1D`` layers store weights as (in, out); ``nn.Linear`` wants (out, in), so those four
weights are transposed both ways. Only GPT-2-expressible models are exported: standard or
orthogonal attention without grouped K/V, GELU MLP, LayerNorm, learned positions. What GPT-2
computes the same way is translated: a model without biases is written with zero biases;
OELM's orthogonal Q/K (frozen buffers or trainable) are ordinary Q/K weights to GPT-2, so
``q_weight``, ``k_weight`` and ``c_v`` are fused into ``c_attn`` (zero Q/K biases); a sparse
model's masked weights are already zero, so its ``weight_mask`` buffers are dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from forgetlab.config import ModelConfig, format_validation_error
from forgetlab.models.checkpoint import load_state_into, state_dict_to_save
from forgetlab.models.errors import ModelExportError, ModelLoadError
from forgetlab.models.gpt import GPT
from forgetlab.models.gpt2_names import forgetlab_to_gpt2_key, gpt2_to_forgetlab_state
from forgetlab.models.nanogpt import read_torch_file

if TYPE_CHECKING:
    from forgetlab.data.tokenizers import Tokenizer

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
GPT2_EOT_ID = 50256
FORGETLAB_TOKENIZER_KEY = "forgetlab_tokenizer"
"""Where an export's tokenizer_config.json names forgetlab's tokenizer (name, sha256): what
``model.init`` checks the run's tokenizer against."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)
"""Written with a tokenizer; removed from a re-export without one (they would describe another)."""


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
        raise ModelLoadError(
            format_validation_error(e, ModelConfig, f"{source}: config.json is not a valid model")
        ) from None


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


def hf_config_dict(cfg: ModelConfig, eos: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of the GPT-2 equivalent of ``cfg``; ``eos`` is the tokenizer's
    end-of-text id (GPT-2's 50256 when unknown and the vocabulary has it)."""
    if eos is None and cfg.vocab_size is not None and cfg.vocab_size > GPT2_EOT_ID:
        eos = GPT2_EOT_ID
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


def generation_config_dict(eos: int | None) -> dict[str, Any]:
    """``generation_config.json``: stop at end-of-text, pad with it (GPT-2 has no pad token)."""
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, str]:
    """The tokenizer files of an export, as ``{file name: text}``.

    ``tokenizer.json`` is the tokenizer itself (HF ``tokenizers``); ``tokenizer_config.json``
    names ``GPT2Tokenizer`` with the end-of-text token as bos, eos and unk, as GPT-2 does, no
    added bos and no clean-up of spaces (so decoding gives back the text exactly); ``vocab.json``
    and ``merges.txt`` are the same BPE for the slow ``GPT2Tokenizer``.
    """
    from forgetlab.data.tokenizers import EOT

    document = tokenizer.hf_tokenizer_json()
    bpe = json.loads(document)["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **specials,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        FORGETLAB_TOKENIZER_KEY: {"name": tokenizer.name, "sha256": tokenizer.sha256},
    }
    return {
        "tokenizer.json": document,
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(specials, indent=2),
        "vocab.json": json.dumps(bpe["vocab"], ensure_ascii=False),
        "merges.txt": "\n".join(["#version: 0.2", *merges]) + "\n",
    }


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    card: str | None = None,
) -> Path:
    """Write a directory ``GPT2LMHeadModel`` loads: ``model.safetensors``, ``config.json``,
    ``generation_config.json``; with ``tokenizer`` its files (then ``AutoTokenizer`` and
    ``pipeline("text-generation")`` load the directory as is); with ``card`` a ``README.md``."""
    check_exportable(model.config)
    vocab = model.config.vocab_size or 0
    if tokenizer is not None and tokenizer.vocab_size > vocab:
        raise ModelExportError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary is {vocab}: they do not belong together"
        )
    eos = tokenizer.eot_id if tokenizer is not None else None
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
    config = hf_config_dict(model.config, eos)
    texts = {
        "config.json": json.dumps(config, indent=2),
        "generation_config.json": json.dumps(generation_config_dict(config["eos_token_id"]), indent=2),
    }
    if tokenizer is not None:
        texts.update(hf_tokenizer_files(tokenizer, model.config.block_size))
    if card is not None:
        texts["README.md"] = card
    for name, text in texts.items():
        _atomic_write_text(out / name, text)
    for stale in set(TOKENIZER_FILES) - set(texts):
        (out / stale).unlink(missing_ok=True)
    return out
