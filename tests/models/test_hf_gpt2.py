"""Hugging Face GPT-2 import and export against ``transformers.GPT2LMHeadModel`` built locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgetlab.config import ModelConfig
from forgetlab.models import GPT, ModelExportError, convert, export_hf, from_pretrained, save_model

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

VOCAB, CONTEXT = 97, 32


def perturbed_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every parameter so zero biases and unit LayerNorms cannot hide a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def hf_model(activation: str = "gelu_new", tie: bool = True) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=48, n_layer=2, n_head=4,
        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    return perturbed_(transformers.GPT2LMHeadModel(cfg), seed=1)


def max_abs_diff(ours: GPT, hf: torch.nn.Module) -> float:
    idx = torch.randint(0, VOCAB, (3, CONTEXT))
    with torch.no_grad():
        return (ours(idx) - hf(idx).logits).abs().max().item()


@pytest.mark.parametrize(("activation", "tie"), [("gelu_new", True), ("gelu", False)])
def test_hf_directory_import_gives_the_same_logits(
    tmp_path: Path, activation: str, tie: bool
) -> None:
    hf = hf_model(activation, tie)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert ours.config.tie_embeddings is tie
    assert max_abs_diff(ours, hf) < 1e-5


def test_hf_pytorch_model_bin_import_gives_the_same_logits(tmp_path: Path) -> None:
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert max_abs_diff(from_pretrained(tmp_path), hf) < 1e-5


@pytest.mark.parametrize("overrides", [{}, {"bias": False, "activation": "gelu_tanh"}])
def test_hf_export_loads_in_transformers_with_the_same_logits(
    tmp_path: Path, overrides: dict
) -> None:
    torch.manual_seed(0)
    base = dict(n_layer=2, n_head=4, n_embd=48, block_size=CONTEXT, vocab_size=VOCAB)
    ours = perturbed_(GPT(ModelConfig.model_validate({**base, **overrides})), seed=2)
    export_hf(ours, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert max_abs_diff(ours, hf) < 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention": "orthogonal", "freeze_qk": True},
        {"attention": "orthogonal", "freeze_qk": False, "bias": False, "qk_init": "whole"},
        {"sparsity": "2:4"},
        {"sparsity": "block", "sparsity_block": 8, "attention": "orthogonal"},
    ],
)
def test_orthogonal_and_sparse_models_export_with_the_same_logits(
    tmp_path: Path, overrides: dict
) -> None:
    """Frozen orthogonal Q/K are plain Q/K weights to GPT-2 (fused into c_attn) and masked
    weights are plain zeros: both export exactly, without forgetlab-only tensors."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    base = dict(n_layer=2, n_head=4, n_embd=48, block_size=CONTEXT, vocab_size=VOCAB)
    ours = GPT(ModelConfig.model_validate({**base, **overrides}))
    with torch.no_grad():  # perturb (frozen buffers too), then re-apply the sparsity masks
        g = torch.Generator().manual_seed(2)
        for t in [*ours.parameters(), *(b for n, b in ours.named_buffers() if "mask" not in n)]:
            t.add_(torch.randn(t.shape, generator=g) * 0.05)
    ours.after_optimizer_step()
    ours.eval()
    export_hf(ours, tmp_path / "hf")
    keys = load_file(tmp_path / "hf" / "model.safetensors").keys()
    assert not [k for k in keys if "mask" in k or "q_weight" in k or "c_v" in k]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert max_abs_diff(ours, hf) < 1e-5


def test_grouped_query_attention_is_refused_by_name(tmp_path: Path) -> None:
    cfg = ModelConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=16, block_size=8, vocab_size=11)
    with pytest.raises(ModelExportError, match="'n_kv_head': 2"):
        export_hf(GPT(cfg), tmp_path)


def test_convert_cli_path_round_trips_forgetlab_to_hf_and_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=CONTEXT, vocab_size=VOCAB)
    ours = perturbed_(GPT(cfg), seed=3)
    convert(save_model(ours, tmp_path / "a.safetensors"), tmp_path / "hf", to="hf")
    back = from_pretrained(tmp_path / "hf")
    idx = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        assert (back(idx) - ours(idx)).abs().max().item() < 1e-6
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"


def test_export_refuses_parts_gpt2_cannot_express(tmp_path: Path) -> None:
    model = GPT(ModelConfig(n_layer=1, n_head=4, n_embd=16, block_size=8, vocab_size=11))
    # stands in for a later variant (e.g. RMSNorm) without registering one
    model.config = model.config.model_copy(update={"norm": "rmsnorm"})
    with pytest.raises(ModelExportError, match="'norm': 'rmsnorm'"):
        export_hf(model, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_sharded_hf_weights_and_a_weights_file_path_are_accepted(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / shard), metadata={"format": "pt"})
    index = {"weight_map": {k: shard for shard, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert max_abs_diff(from_pretrained(tmp_path), hf) < 1e-5
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert max_abs_diff(from_pretrained(tmp_path / "model.safetensors"), hf) < 1e-5
