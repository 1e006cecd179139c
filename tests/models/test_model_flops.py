"""Per-token FLOPs: 6N + 12 L H Q T (PaLM appendix B, nanoGPT estimate_mfu)."""

from __future__ import annotations

from forgetlab.config import ModelConfig
from forgetlab.models import GPT, model_flops_per_token


def test_flops_per_token_match_a_hand_computation() -> None:
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=101)
    V, T, C, L, H, Q = 101, 16, 32, 2, 2, 16
    block = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C
    n = V * C + L * block + 2 * C  # nanoGPT's N: everything but the position embeddings
    flops = model_flops_per_token(cfg)
    assert flops["train"] == 6 * n + 12 * L * H * Q * T
    assert flops["forward"] * 3 == flops["train"]
    assert flops["forward"] + flops["backward"] == flops["train"]
    assert model_flops_per_token(cfg, seq_len=8)["train"] == 6 * n + 12 * L * H * Q * 8


def test_flops_n_is_the_models_non_embedding_count() -> None:
    cfg = ModelConfig(n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=500)
    n = GPT(cfg).num_params(exclude_embeddings=True)
    assert model_flops_per_token(cfg, seq_len=1)["train"] == 6 * n + 12 * 3 * 4 * 16 * 1


def test_gpt2_124m_flops_agree_with_nanogpt() -> None:
    # nanoGPT: GPT-2 small with the padded 50304 vocabulary has 123.69M non-embedding params
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    n = 123_689_472
    assert model_flops_per_token(cfg)["train"] == 6 * n + 12 * 12 * 12 * 64 * 1024
