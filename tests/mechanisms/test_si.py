"""Synaptic Intelligence: the path integral on a hand-computed SGD path, and a Trainer run."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from forgetlab.mechanisms.si import SI
from micro_run import run


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([value]))


def sgd_steps(mech, ctx, task_loss, steps, lr=0.25):
    opt = torch.optim.SGD(ctx.model.parameters(), lr=lr)
    for _ in range(steps):
        loss = task_loss(ctx.model.theta) + sum(
            mech.loss(ctx, None, None).values(), torch.zeros(())
        )
        loss.backward()
        mech.after_backward(ctx)
        opt.step()
        mech.after_step(ctx)
        opt.zero_grad()


def test_si_path_integral_and_importance_by_hand():
    ctx = SimpleNamespace(
        model=Scalar(1.0), stage=0, device=torch.device("cpu"), stream=SimpleNamespace(domains="ab")
    )
    mech = SI(SI.Knobs(lam=2.0, damping=0.1))
    mech.on_stage_start(ctx)
    # L = theta^2 (gradient 2 theta), lr 0.25: theta 1 -> 0.5 -> 0.25;
    # omega = -(2 * -0.5) - (1 * -0.25) = 1.25, Delta = -0.75
    sgd_steps(mech, ctx, lambda th: th.square().sum(), steps=2)
    assert torch.allclose(mech.omega["theta"], torch.tensor([1.25]))
    mech.on_stage_end(ctx)
    ((omega, anchor),) = mech.penalty.terms
    assert torch.allclose(omega["theta"], torch.tensor([1.25 / (0.75**2 + 0.1)]))
    assert torch.allclose(anchor["theta"], torch.tensor([0.25]))


def test_si_path_integral_ignores_its_own_penalty_pull():
    ctx = SimpleNamespace(
        model=Scalar(1.0), stage=0, device=torch.device("cpu"), stream=SimpleNamespace(domains="ab")
    )
    mech = SI(SI.Knobs(lam=2.0))
    mech.penalty.append({"theta": torch.tensor([1.0])}, {"theta": torch.tensor([0.0])})
    ctx.stage = 1
    mech.on_stage_start(ctx)
    sgd_steps(mech, ctx, lambda th: 0.0 * th.sum(), steps=3)  # only the penalty moves theta
    assert float(ctx.model.theta.detach()) < 0.5
    assert torch.equal(mech.omega["theta"], torch.zeros(1))


def test_si_runs_through_the_trainer(fixture_data, tmp_path):
    record = run(fixture_data, tmp_path / "r", [{"name": "si", "lam": 10.0}], steps_per_stage=3)
    assert record["flops"]["total"]["mechanisms"] == 0.0  # element-wise work only
    r = record["R"]["loss"]
    assert r[2][1] < r[0][1]


def test_si_knobs_are_validated():
    with pytest.raises(ValueError, match="damping"):
        SI.Knobs(lam=1.0, damping=0.0)
