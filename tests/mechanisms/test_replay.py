"""Experience replay: batch composition, what is written, herding on the trainer, exact resume."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from forgetlab.config import ConfigError, MechanismConfig, resolve_run_config
from forgetlab.mechanisms import Batch, StepOutput, TrainContext, build_mechanisms
from forgetlab.models import model_flops_per_token
from forgetlab.train import Trainer
from micro_run import micro_config

STEPS = 4


def replay(**knobs):
    (m,) = build_mechanisms([MechanismConfig(name="replay", **knobs)])
    return m


def fake_ctx(n_domains=3):
    stream = SimpleNamespace(domains=[f"d{i}" for i in range(n_domains)])
    return TrainContext(
        config=None, model=None, optimizer=None, stream=stream, device=torch.device("cpu"),
        autocast=contextlib.nullcontext, generator=torch.Generator().manual_seed(0),
    )


def batch_of(ids, domain, seq=5):
    x = torch.as_tensor(ids)[:, None].repeat(1, seq)
    return Batch(x, x + 1, None, domain)


@pytest.mark.parametrize(("knobs", "n_old"), [({"ratio": "1:1"}, 3), ({"ratio": "2:1"}, 2),
                                              ({"replay_fraction": 0.5}, 3)])
def test_batch_holds_new_and_old_rows_in_the_ratio_and_only_new_rows_are_written(knobs, n_old):
    m, ctx = replay(capacity=10, **knobs), fake_ctx()
    m.setup(ctx)
    first = m.make_batch(ctx, batch_of(range(100, 106), 0))
    assert torch.equal(first.x, batch_of(range(100, 106), 0).x)  # empty memory: all new
    m.loss(ctx, first, StepOutput(None, torch.zeros(6, 5)))
    assert len(m.buffer) == 6

    mixed = m.make_batch(ctx, batch_of(range(200, 206), 1))
    assert mixed.x.shape == (6, 5)
    assert mixed.x[: 6 - n_old, 0].tolist() == list(range(200, 206 - n_old))
    assert set(mixed.x[6 - n_old :, 0].tolist()) <= set(range(100, 106))
    assert mixed.replayed.tolist() == [False] * (6 - n_old) + [True] * n_old
    m.loss(ctx, mixed, StepOutput(None, torch.zeros(6, 5)))
    held = set(m.buffer.contents()[0][:, 0].tolist())
    assert held == set(range(100, 106)) | set(range(200, 206 - n_old))

    # a batch it did not mix (another mechanism's extra step) is not written
    m.loss(ctx, batch_of(range(300, 306), 1), StepOutput(None, torch.zeros(6, 5)))
    assert len(m.buffer) == 12 - n_old


def test_loss_policy_scores_rows_with_the_steps_own_losses():
    m, ctx = replay(capacity=3, policy="loss"), fake_ctx(n_domains=1)
    m.setup(ctx)
    b = m.make_batch(ctx, batch_of(range(6), 0))
    losses = torch.tensor([0.1, 5.0, 0.2, 4.0, 3.0, 0.3])[:, None].repeat(1, 5)
    m.loss(ctx, b, StepOutput(None, losses))
    assert sorted(m.buffer.contents()[0][:, 0].tolist()) == [1, 3, 4]


def test_capacity_below_domain_count_is_refused_for_per_domain_policies():
    m = replay(capacity=2, policy="balanced")
    run = resolve_run_config({"model": {"preset": "micro"},
                              "data": {"domains": ["code", "math", "legal"]}})
    with pytest.raises(ConfigError, match="capacity >= 3"):
        m.check_run(run)


def test_herding_replay_on_the_trainer(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, [{"name": "replay", "capacity": 6, "policy": "herding",
                                       "herding_pool": 10}], seed=1)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    record = trainer.run()
    buf = trainer.mechanisms[0].buffer
    # stage 1 offered 4 steps x 4 rows to a 10-row pool and herded floor(6/1) = 6 of them;
    # stage 2's arrival cut them to the herding prefix of floor(6/2) = 3, and the last stage
    # herds nothing (nothing trains after it)
    assert buf.domain[buf.domain >= 0].tolist() == [0] * 3
    assert len(buf.pool) == 8 and buf.seen == {0: 16, 1: 8}  # 1:1 mix: 2 new rows a step
    fwd = model_flops_per_token(trainer.model_cfg, 64)["forward"]
    stages = record["flops"]["per_stage"]
    assert stages[0]["mechanisms"] == pytest.approx(10 * 64 * fwd)
    assert stages[1]["mechanisms"] == 0
    assert stages[1]["train_tokens"] == STEPS * 4 * 64  # replay keeps the batch shape
