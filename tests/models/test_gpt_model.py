"""The GPT's shape, causality, tying, initialisation, parameter count and config errors."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from forgetlab.config import ConfigError, ModelConfig, resolve_run_config
from forgetlab.models import ATTENTION, FFN, GPT, NORM, POSITIONS, build_model
from forgetlab.models.sparsity import SPARSITY

VOCAB = 101


def micro(**overrides: object) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=VOCAB)
    return ModelConfig.model_validate({**base, **overrides})


def test_forward_gives_logits_of_shape_batch_time_vocab() -> None:
    model = GPT(micro())
    idx = torch.randint(0, VOCAB, (3, 11))
    assert model(idx).shape == (3, 11, VOCAB)
    assert model.hidden(idx).shape == (3, 11, 32)
    assert torch.equal(model.logits_from_hidden(model.hidden(idx)), model(idx))


def test_changing_a_future_token_leaves_earlier_logits_unchanged() -> None:
    torch.manual_seed(0)
    model = GPT(micro()).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_head_weight_is_the_token_embedding_when_tied() -> None:
    model = GPT(micro())
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(micro(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_residual_projections_start_with_std_scaled_by_depth() -> None:
    torch.manual_seed(0)
    cfg = micro(n_layer=8, n_embd=128, n_head=4)
    model = GPT(cfg)
    expected = 0.02 / math.sqrt(2 * cfg.n_layer)
    projections = [w for b in model.blocks for w in (b.attn.c_proj.weight, b.ffn.c_proj.weight)]
    residual = torch.cat([w.flatten() for w in projections])
    assert residual.std().item() == pytest.approx(expected, rel=0.03)
    assert model.blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert torch.count_nonzero(model.blocks[0].attn.c_attn.bias) == 0


def test_num_params_matches_a_hand_count() -> None:
    V, T, C, L, F = VOCAB, 16, 32, 2, 4 * 32
    ln_1 = ln_2 = 2 * C
    c_attn, attn_proj = C * 3 * C + 3 * C, C * C + C
    c_fc, mlp_proj = C * F + F, F * C + C
    per_block = ln_1 + c_attn + attn_proj + ln_2 + c_fc + mlp_proj
    total = V * C + T * C + L * per_block + 2 * C  # wte (= head), wpe, blocks, ln_f
    model = GPT(micro())
    assert model.num_params() == total
    assert model.num_params(exclude_embeddings=True) == total - T * C
    untied = GPT(micro(tie_embeddings=False))
    assert untied.num_params() == total + V * C
    assert untied.num_params(exclude_embeddings=True) == total - T * C


def test_build_model_fills_vocab_and_refuses_a_conflicting_one() -> None:
    cfg = micro(vocab_size=None)
    assert build_model(cfg, vocab_size=77).config.vocab_size == 77
    assert build_model(micro(), vocab_size=VOCAB).config.vocab_size == VOCAB
    with pytest.raises(ConfigError, match=r"model\.vocab_size = 101"):
        build_model(micro(), vocab_size=50)
    with pytest.raises(ConfigError, match=r"model\.vocab_size = None"):
        GPT(cfg)


def test_width_not_divisible_by_heads_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_embd = 65 .*model\.n_head = 2"):
        resolve_run_config({"model": {"preset": "micro"}}, ["model.n_embd=65"])


def test_preset_fields_can_be_overridden() -> None:
    run = resolve_run_config({"model": {"preset": "small"}}, ["model.n_layer=3"])
    model = build_model(run.model, vocab_size=VOCAB)
    assert len(model.blocks) == 3
    assert model.config.n_embd == 512 and model.config.ffn_hidden == 2048


def test_every_config_part_name_has_a_registered_class_and_vice_versa() -> None:
    for registry in (ATTENTION, FFN, NORM, POSITIONS, SPARSITY):
        allowed = typing.get_args(ModelConfig.model_fields[registry.field].annotation)
        assert sorted(allowed) == registry.names()


def test_unknown_part_name_error_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match=r"model.ffn = 'nope'.*\['memory', 'mlp', 'moe', 'swiglu'\]"):
        FFN.get("nope")


def test_forward_runs_under_bf16_autocast_and_backward_reaches_every_parameter() -> None:
    model = GPT(micro(dropout=0.1))
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_grouped_query_attention_shrinks_the_kv_projection() -> None:
    model = GPT(micro(n_kv_head=1))  # 2 query heads share one key/value head of width 16
    assert model.blocks[0].attn.c_attn.weight.shape == (32 + 2 * 16, 32)
    assert model(torch.randint(0, VOCAB, (2, 5))).shape == (2, 5, VOCAB)


def test_sequence_longer_than_context_is_refused() -> None:
    with pytest.raises(ValueError, match="block_size = 16"):
        GPT(micro())(torch.zeros(1, 17, dtype=torch.long))
