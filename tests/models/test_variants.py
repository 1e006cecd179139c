"""The swappable parts of the OELM, memory-layer and methods studies: orthogonal frozen Q/K,
RoPE, GQA, KV-cache generation, the memory layer, MoE routing and losses, structured sparsity,
FLOPs, diagnose."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from forgetlab.cli.main import app
from forgetlab.config import ModelConfig, RunConfig, resolve_run_config
from forgetlab.models import GPT, build_model, inspect_model, model_flops_per_token, save_model
from forgetlab.models.diagnose import diagnose
from forgetlab.models.memory import product_key_topk
from forgetlab.models.moe import capacity_assign, cv2_balance_loss, switch_balance_loss, z_loss
from forgetlab.models.positions import Rotary
from forgetlab.train.optim import build_optimizer

VOCAB = 97


def micro(**overrides: object) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB)
    return ModelConfig.model_validate({**base, **overrides})


def run_diagnose(model: GPT) -> dict:
    ids = torch.randint(0, VOCAB, (2, 17))
    cfg = RunConfig(model=model.config)
    return diagnose(model, ids[:, :-1], ids[:, 1:], lambda m: build_optimizer(m, cfg))


@pytest.mark.parametrize("qk_init", ["per_head", "whole"])
def test_orthogonal_qk_init_has_orthonormal_rows(qk_init: str) -> None:
    attn = GPT(micro(attention="orthogonal", qk_init=qk_init, n_kv_head=1)).blocks[0].attn
    for name, blocks in attn.orthogonal_blocks.items():
        w = getattr(attn, name).view(blocks, -1, 32)
        eye = torch.eye(w.size(1)).expand_as(w @ w.transpose(1, 2))
        assert torch.allclose(w @ w.transpose(1, 2), eye, atol=1e-5)
    q = attn.q_weight  # square: Q^T Q = I as well
    if qk_init == "whole":
        assert torch.allclose(q.T @ q, torch.eye(32), atol=1e-5)


def test_small_preset_freezes_exactly_the_qk_projections() -> None:
    frozen = resolve_run_config({"model": {"preset": "small"}}, ["model.attention=orthogonal"])
    with torch.device("meta"):
        report = inspect_model(build_model(frozen.model, vocab_size=VOCAB))
    assert report["frozen"] == 6 * 2 * 512 * 512 == 3_145_728
    trainable = resolve_run_config(
        {"model": {"preset": "small"}}, ["model.attention=orthogonal", "model.freeze_qk=false"]
    )
    with torch.device("meta"):
        model = build_model(trainable.model, vocab_size=VOCAB)
    assert inspect_model(model)["frozen"] == 0
    assert inspect_model(model)["total"] == report["total"]
    assert all(n not in dict(model.named_buffers()) for n in ("blocks.0.attn.q_weight",))


def test_diagnose_passes_on_healthy_models() -> None:
    for cfg in (micro(attention="orthogonal"), micro(ffn="memory"), micro(sparsity="2:4")):
        report = run_diagnose(GPT(cfg))
        assert report["ok"], report["violations"]
    assert run_diagnose(GPT(micro(attention="orthogonal")))["frozen"] == 2 * 2 * 32 * 32


def test_diagnose_names_a_frozen_tensor_left_as_a_parameter() -> None:
    model = GPT(micro(attention="orthogonal"))
    attn = model.blocks[1].attn
    weight = attn._buffers.pop("q_weight")
    attn.q_weight = nn.Parameter(weight)
    report = run_diagnose(model)
    problems = {(v["tensor"], v["problem"].split(" (")[0]) for v in report["violations"]}
    assert not report["ok"]
    assert ("blocks.1.attn.q_weight", "declared frozen but is a parameter") in problems


def test_diagnose_cli_fails_on_a_checkpoint_that_overwrote_frozen_qk(tmp_path) -> None:
    model = GPT(micro(attention="orthogonal"))
    runner = CliRunner()
    healthy = save_model(model, tmp_path / "ok.safetensors")
    result = runner.invoke(app, ["diagnose", str(healthy), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["ok"] and out["frozen"] == 4096 and "random token ids" in out["data"]
    with torch.no_grad():
        model.blocks[0].attn.k_weight.normal_()  # what a wrong checkpoint load leaves behind
    broken = save_model(model, tmp_path / "broken.safetensors")
    result = runner.invoke(app, ["diagnose", str(broken), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [v["tensor"] for v in report["violations"]] == ["blocks.0.attn.k_weight"]


def test_rope_matches_a_direct_rotation_of_each_pair() -> None:
    cfg = micro(positions="rope", rope_theta=500.0)
    rot = Rotary(cfg)
    q = torch.randn(1, 2, 5, 16)
    got, _ = rot(q, q, 3)
    expected = torch.empty_like(q)
    for t in range(5):
        for i in range(8):
            angle = (t + 3) * 500.0 ** (-2 * i / 16)
            c, s = math.cos(angle), math.sin(angle)
            a, b = q[..., t, 2 * i], q[..., t, 2 * i + 1]
            expected[..., t, 2 * i], expected[..., t, 2 * i + 1] = c * a - s * b, s * a + c * b
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positions": "rope", "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 1, "bias": False},
        {"attention": "orthogonal", "ffn": "memory"},
        {"ffn": "moe"},
    ],
)
def test_kv_cache_generation_equals_full_recomputation(overrides: dict) -> None:
    torch.manual_seed(0)
    model = GPT(micro(**overrides))
    prompt = torch.randint(0, VOCAB, (2, 4))
    cached = model.generate(prompt, 20, temperature=0)  # runs past block_size = 16
    full = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    gen = torch.Generator().manual_seed(1)
    sampled = model.generate(prompt, 5, temperature=0.8, top_k=5, generator=gen)
    assert sampled.shape == (2, 9)


def test_minimind_preset_has_about_25_8m_parameters() -> None:
    run = resolve_run_config({"model": {"preset": "minimind-26m"}})
    assert run.data.tokenizer == "bpe-6400"
    with torch.device("meta"):
        model = build_model(run.model, vocab_size=6400)
    assert model.num_params() == 25_829_888


def test_product_key_topk_equals_brute_force_over_all_entries() -> None:
    torch.manual_seed(0)
    q, sub = torch.randn(50, 8), torch.randn(2, 6, 4)
    full_keys = torch.cat([sub[0].repeat_interleave(6, 0), sub[1].repeat(6, 1)], dim=1)
    scores, ids = product_key_topk(q, sub, 4)
    brute_scores, brute_ids = (q @ full_keys.T).topk(4, dim=-1)
    assert torch.equal(ids, brute_ids)
    assert torch.allclose(scores, brute_scores, atol=1e-5)


def test_memory_layer_gradients_reach_bank_keys_and_gate_and_gather_only_selected() -> None:
    model = GPT(micro(ffn="memory", memory={"knowledge_num": 64, "num_selected": 2}))
    model(torch.randint(0, VOCAB, (2, 8))).logsumexp(-1).mean().backward()
    layer = model.blocks[0].ffn
    for p in (layer.bank, layer.sub_keys, layer.gate.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    touched = (layer.bank.grad.flatten(1).abs().sum(1) > 0).sum()
    assert 0 < touched <= 2 * 8 * 2  # at most tokens x selected entries


def test_balance_losses_on_a_hand_computed_routing() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    top = probs.topk(1, dim=-1).indices  # experts 0, 0, 2, 0
    # f = (3/4, 0, 1/4), P = (0.475, 0.25, 0.275): 3 * (0.75 * 0.475 + 0.25 * 0.275)
    assert switch_balance_loss(probs, top, 3).item() == pytest.approx(3 * (0.35625 + 0.06875))
    gates = torch.ones(4, 1)  # k = 1: renormalised weight 1; importance = load = (3, 0, 1)
    v = torch.tensor([3.0, 0.0, 1.0])
    cv2 = (v.var(unbiased=False) / v.mean() ** 2).item()
    assert cv2_balance_loss(probs, top, gates).item() == pytest.approx(2 * cv2)
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert z_loss(logits).item() == pytest.approx((math.log(2) ** 2 + (1 + math.log(2)) ** 2) / 2)


def test_capacity_drops_are_counted_exactly_and_reroute_uses_the_next_choice() -> None:
    # 5 tokens, all ranking expert 0 first, 1 second, 2 third; capacity 2 per expert, k = 1
    choice = torch.tensor([[0, 1, 2]] * 5)
    expert, position, kept = capacity_assign(choice, 1, 3, 2, reroute=False)
    assert kept.tolist() == [True, True, False, False, False]
    assert position.tolist() == [0, 1, 2, 3, 4]
    expert, position, kept = capacity_assign(choice, 1, 3, 2, reroute=True)
    assert expert.tolist() == [0, 0, 1, 1, 2] and position.tolist() == [0, 1, 0, 1, 0]
    assert kept.all()


def test_moe_layer_reports_its_drops_and_routes_without_a_token_loop() -> None:
    cfg = micro(ffn="moe", moe={"num_experts": 4, "top_k": 2, "capacity_factor": 0.5})
    model = GPT(cfg)
    layer = model.blocks[0].ffn
    with torch.no_grad():
        layer.router[0].zero_()
        layer.router[0][0].fill_(1.0)  # expert 0 wins for tokens with positive sums
    model(torch.randint(0, VOCAB, (2, 8)))
    capacity = math.ceil(0.5 * 2 * 16 / 4)
    assert int(layer.load.max()) <= capacity
    assert int(layer.load.sum()) + layer.dropped == 2 * 16
    stats = model.stats()
    assert stats["moe/dropped"] == pytest.approx(
        sum(b.ffn.dropped for b in model.blocks) / 2 / 32
    )
    assert set(model.aux_losses()) == {"moe/balance", "moe/z"}


def test_two_four_masks_survive_training_with_untouched_optimizer_state() -> None:
    torch.manual_seed(0)
    model = GPT(micro(sparsity="2:4"))
    opt = build_optimizer(model, RunConfig(model=model.config))
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 17))
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
        model.after_optimizer_step()
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            groups = (module.weight != 0).view(module.weight.size(0), -1, 4).sum(-1)
            assert (groups == 2).all()
            state = opt.state[module.weight]
            masked = ~module.weight_mask
            assert (state["exp_avg"][masked] == 0).all() and (state["exp_avg_sq"][masked] == 0).all()


def test_block_sparsity_keeps_the_density_share_of_whole_blocks() -> None:
    model = GPT(micro(sparsity="block", sparsity_block=8, sparsity_density=0.25))
    mask = model.blocks[0].attn.c_attn.weight_mask
    grid = mask.view(12, 8, 4, 8).all(3).all(1)
    assert grid.sum() == round(0.25 * 48) and mask.sum() == grid.sum() * 64


def test_flops_count_active_experts_frozen_qk_savings_and_sparse_density() -> None:
    dense = model_flops_per_token(micro())
    assert dense["train"] == dense["train_dense"] == dense["train_effective"]
    frozen = model_flops_per_token(micro(attention="orthogonal"))
    assert dense["forward"] - frozen["forward"] == 2 * 2 * 2 * 32  # no q/k biases
    qk_bias, qk_weight = 2 * 2 * 32, 2 * 2 * 32 * 32  # per token, both layers
    assert dense["backward"] - frozen["backward"] == 2 * qk_bias + 2 * (qk_bias + qk_weight)
    e8 = model_flops_per_token(micro(ffn="moe", moe={"num_experts": 8, "noisy": False}))
    e16 = model_flops_per_token(micro(ffn="moe", moe={"num_experts": 16, "noisy": False}))
    assert e16["train"] - e8["train"] == 6 * 2 * 8 * 32  # only the router grows
    sparse = model_flops_per_token(micro(sparsity="2:4"))
    linear = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)
    assert sparse["train"] == dense["train"]
    assert sparse["train_effective"] == dense["train"] - 6 * linear // 2


def test_config_errors_name_key_value_and_allowed() -> None:
    with pytest.raises(ValueError, match=r"knowledge_num = 50 is not a perfect square"):
        micro(ffn="memory", memory={"knowledge_num": 50})
    with pytest.raises(ValueError, match=r"sparsity_block = 5 does not divide model.n_embd = 32"):
        micro(sparsity="block", sparsity_block=5)
