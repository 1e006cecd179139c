"""Selective write: the gate's write fraction, zero gradient for gated tokens, trainer integration."""

import contextlib

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from forgetlab.config import ModelConfig
from forgetlab.mechanisms import Batch, TrainContext, build_mechanisms
from forgetlab.mechanisms.selective_write import token_scores
from forgetlab.models import build_model, model_flops_per_token
from forgetlab.train import Trainer
from forgetlab.train.optim import weighted_token_mean
from micro_run import micro_config, run

STEPS = 6


def gate_of(**knobs):
    from forgetlab.config import MechanismConfig

    (m,) = build_mechanisms([MechanismConfig(name="selective_write", **knobs)])
    return m


def fake_ctx(model):
    return TrainContext(
        config=None, model=model, optimizer=None, stream=None, device=torch.device("cpu"),
        autocast=contextlib.nullcontext, generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.7])
def test_write_fraction_tracks_the_target_on_a_known_loss_distribution(fraction):
    m = gate_of(write_fraction=fraction, window=2048)
    g = torch.Generator().manual_seed(0)
    written = total = 0
    for i in range(40):  # exponential losses whose scale drifts: the quantile must follow it
        scores = torch.empty(8, 64).exponential_(generator=g) * (1 + i / 20)
        gate = m.gate(scores, torch.ones(8, dtype=torch.bool))
        written, total = written + int(gate.sum()), total + gate.numel()
    assert written / total == pytest.approx(fraction, abs=0.02)


def test_threshold_writes_scores_a_z_score_above_the_running_mean():
    m = gate_of(threshold=1.0, window=4096)
    g = torch.Generator().manual_seed(1)
    written = total = 0
    for _ in range(30):
        scores = torch.randn(16, 64, generator=g) * 2 + 5
        gate = m.gate(scores, torch.ones(16, dtype=torch.bool))
        written, total = written + int(gate.sum()), total + gate.numel()
    assert written / total == pytest.approx(0.1587, abs=0.015)  # P(Z >= 1)


def test_gated_tokens_get_zero_gradient_and_the_rest_do_not():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16), 50)
    m = gate_of(write_fraction=0.25)
    x = torch.randint(50, (4, 16))
    y = torch.randint(50, (4, 16))
    batch = m.make_batch(fake_ctx(model), Batch(x, y))
    w = batch.weights
    assert w.shape == y.shape and w.mean().item() == pytest.approx(0.25, abs=0.02)

    logits = model(batch.x)
    logits.retain_grad()
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    assert torch.allclose(nll, token_scores(logits.detach(), y, "surprise"), atol=1e-5)
    # the gate keeps the most surprising quarter of the tokens (first batch: its own quantile)
    assert nll[w > 0].min() >= nll[w == 0].max()
    weighted_token_mean(nll, w).backward()
    assert logits.grad[w == 0].eq(0).all()
    assert logits.grad[w > 0].abs().sum(-1).gt(0).all()


def test_sequence_gate_and_replayed_rows():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8), 40)
    m = gate_of(write_fraction=0.5, granularity="sequence", signal="uncertainty")
    x, y = torch.randint(40, (6, 8)), torch.randint(40, (6, 8))
    replayed = torch.tensor([False, False, False, False, True, True])
    batch = m.make_batch(fake_ctx(model), Batch(x, y, replayed=replayed))
    w = batch.weights
    assert (w == w[:, :1]).all()  # one decision per sequence
    assert w[4:].eq(1).all() and w[:4, 0].sum() == 2  # replayed rows always written
    with torch.no_grad():
        entropy = token_scores(model(x), y, "uncertainty").mean(1)[:4]
    assert set(entropy.topk(2).indices.tolist()) == set(w[:4, 0].nonzero().flatten().tolist())


def test_the_window_counts_tokens_in_both_granularities():
    """A sequence score stands for its tokens: a 64-token window over 8-token sequences keeps the
    last 8 sequence scores, so after a domain switch the quantile follows the new scores as soon
    as 64 new tokens have passed, as the token gate does."""
    m = gate_of(write_fraction=0.5, granularity="sequence", window=64)
    stream = torch.ones(4, dtype=torch.bool)
    for _ in range(5):  # old domain: sequence scores around 1
        m.gate(torch.full((4, 1), 1.0), stream, tokens_per_score=8)
    assert m.history.numel() == 8
    m.gate(torch.full((4, 1), 3.0), stream, tokens_per_score=8)
    m.gate(torch.full((4, 1), 3.0), stream, tokens_per_score=8)  # 64 new-domain tokens
    assert m.history.eq(3.0).all()
    new = torch.tensor([[2.0], [2.5], [3.5], [4.0]])
    assert m.gate(new, stream, tokens_per_score=8).flatten().tolist() == [False, False, True, True]

    tokens = gate_of(write_fraction=0.5, window=64)
    tokens.gate(torch.ones(4, 32), stream)
    assert tokens.history.numel() == 64


def test_knobs_are_validated():
    from forgetlab.config import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        gate_of(write_fraction=0.3, threshold=1.0)
    with pytest.raises(ConfigError, match="write_fraction"):
        gate_of(write_fraction=1.5)
    with pytest.raises(ConfigError, match="signal"):
        gate_of(signal="novelty")


def test_trainer_logs_write_fraction_and_counts_scoring_flops(fixture_data, tmp_path):
    cfg = micro_config(
        fixture_data,
        [{"name": "selective_write", "write_fraction": 0.3, "window": 256},
         {"name": "replay", "capacity": 8}],
        steps=STEPS, lr=1e-3, log_every=STEPS,
    )  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.run()
    curves = pd.read_parquet(tmp_path / "run" / "curves.parquet")
    ends = curves.dropna(subset=["selective_write/write_fraction"])
    assert len(ends) == 2  # one row per stage end: that stage's fraction
    assert ends["selective_write/write_fraction"].between(0.2, 0.4).all()
    sw = trainer.mechanisms[0]
    assert sw.stage_fractions == pytest.approx(ends["selective_write/write_fraction"].tolist())

    fwd = model_flops_per_token(trainer.model_cfg, 64)["forward"]
    for s, stage in enumerate(record["flops"]["per_stage"]):
        # one scoring forward over every micro-batch (4 x 64 tokens) per step
        assert stage["mechanisms"] == pytest.approx(STEPS * 4 * 64 * fwd), s
    assert record["status"] == "finished"


def test_a_step_whose_gate_wrote_no_token_logs_no_training_loss(fixture_data, tmp_path):
    """A z-score threshold no token reaches writes nothing: every logged step trained on no token,
    so its training loss is missing (NaN), not the 0.0 of sum(w * l) / sum(w)."""
    record = run(fixture_data, tmp_path / "run", [{"name": "selective_write", "threshold": 50.0}])
    assert record["status"] == "finished"
    curves = pd.read_parquet(tmp_path / "run" / "curves.parquet")
    logged = curves.dropna(subset=["grad_norm"])
    assert len(logged) == 4 and (logged["grad_norm"] == 0).all()
    assert logged["train_loss"].isna().all()


def test_a_written_step_logs_the_mean_loss_of_its_written_micro_batches(fixture_data, tmp_path):
    run(fixture_data, tmp_path / "run", [{"name": "selective_write", "write_fraction": 0.5}])
    curves = pd.read_parquet(tmp_path / "run" / "curves.parquet")
    logged = curves.dropna(subset=["grad_norm"])
    assert logged["train_loss"].between(3.0, 8.0).all()  # a cross-entropy over 512 tokens
