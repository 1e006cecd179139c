"""Generative replay: sampling with temperature / top-k, and pseudo-samples on the trainer."""

import numpy as np
import pytest
import torch

from forgetlab.config import ConfigError, MechanismConfig, ModelConfig
from forgetlab.data import open_stream
from forgetlab.mechanisms import build_mechanisms
from forgetlab.mechanisms.parts.sampling import generate, generation_flops
from forgetlab.models import build_model
from forgetlab.train import Trainer
from micro_run import micro_config

STEPS = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16), 50)


def sample(model, seed, **kw):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    return generate(model, prompt, 10, generator=torch.Generator().manual_seed(seed), **kw)


def test_greedy_top1_and_near_zero_temperature_agree(model):
    greedy = sample(model, 0, temperature=0.0)
    assert greedy.shape == (2, 13) and greedy[:, :3].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert torch.equal(sample(model, 1, temperature=1.0, top_k=1), greedy)
    assert torch.equal(sample(model, 2, temperature=1e-4, top_k=None), greedy)
    assert model.training  # sampling switches to eval mode and back


def test_samples_stay_in_the_top_k_and_repeat_with_the_seed(model):
    seq = sample(model, 7, temperature=2.0, top_k=3)
    with torch.no_grad():
        logits = model(seq[:, :-1])
    top3 = logits.topk(3, dim=-1).indices[:, 2:]  # predictions for tokens 3..12
    assert (top3 == seq[:, 3:, None]).any(-1).all()
    assert torch.equal(sample(model, 7, temperature=2.0, top_k=3), seq)
    draws = {tuple(sample(model, s, temperature=2.0, top_k=None).flatten().tolist())
             for s in range(5)}
    assert len(draws) > 1  # a real sampler, not argmax


def test_generation_flops_count_a_forward_over_each_context():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    one = generation_flops(cfg, 1, 3, 4)
    assert generation_flops(cfg, 5, 3, 4) == pytest.approx(5 * one)
    assert generation_flops(cfg, 1, 3, 5) > one  # the fifth token reads a longer context


def test_cannot_run_beside_real_replay():
    with pytest.raises(ConfigError, match="double the replayed share"):
        build_mechanisms([MechanismConfig(name="generative_replay"),
                          MechanismConfig(name="replay")])


def test_stage_end_fills_memory_with_model_text(fixture_data, tmp_path):
    cfg = micro_config(
        fixture_data,
        [{"name": "generative_replay", "capacity": 4, "top_k": 20, "prompt_tokens": 8,
          "gen_batch_size": 2, "replay_fraction": 0.25}],
        seed=2, steps=STEPS, lr=1e-3, log_every=STEPS,
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.run()
    x, y, dom = trainer.mechanisms[0].buffer.contents()
    assert x.shape == (4, 64) and dom.tolist() == [0] * 4  # floor(4/1) rows of the first domain
    assert torch.equal(x[:, 1:], y[:, :-1])  # one generated sequence of 65 tokens per row
    train = np.asarray(open_stream(fixture_data.domains[:1], fixture_data.tokenizer,
                                   fixture_data.cache_dir)[fixture_data.domains[0]].train)
    windows = np.lib.stride_tricks.sliding_window_view(train, 8)
    for row in x[:, :8].numpy():  # the prompt is a real prefix of the domain
        assert (windows == row).all(1).any()
    stages = record["flops"]["per_stage"]
    assert stages[0]["mechanisms"] == pytest.approx(generation_flops(trainer.model_cfg, 4, 8, 57))
    assert stages[1]["mechanisms"] == 0  # nothing is generated after the last stage
    assert stages[1]["train_tokens"] == STEPS * 4 * 64


def test_generation_flops_match_the_model_forward_flops():
    from forgetlab.models import model_flops_per_token

    def fwd(context):
        return model_flops_per_token(cfg, context)["forward"]

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=6, vocab_size=50)
    # prompt of 4 fed at once, then one token at contexts 5 and 6; at length 6 the cache is full,
    # so the fourth step feeds the cropped window of 6 again
    expected = 4 * fwd(4) + fwd(5) + fwd(6) + 6 * fwd(6)
    assert generation_flops(cfg, 3, 4, 4) == pytest.approx(3 * expected)
