"""EWC and online EWC: decay arithmetic, knob errors, and runs through the real Trainer."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import build_mechanisms
from forgetlab.mechanisms.ewc import OnlineEWC
from micro_run import run


def test_online_ewc_decays_old_fisher_by_gamma_per_domain(monkeypatch):
    model = nn.Linear(2, 1, bias=False)
    ctx = SimpleNamespace(
        model=model, stage=0, device=torch.device("cpu"), stream=SimpleNamespace(domains="abcd")
    )
    fishers = iter(
        [torch.tensor([[4.0, 8.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])]
    )
    mech = OnlineEWC(OnlineEWC.Knobs(lam=1.0, gamma=0.5))
    monkeypatch.setattr(mech, "importance", lambda ctx: {"weight": next(fishers)})
    for stage in range(4):  # the last domain's Fisher is never needed, so never computed
        ctx.stage = stage
        with torch.no_grad():
            model.weight.fill_(float(stage))
        mech.on_stage_end(ctx)
    ((omega, anchor),) = mech.penalty.terms
    # gamma^2 F1 + gamma F2 + F3 = 0.25 * (4, 8) + 0.5 * (2, 0) + (1, 1)
    torch.testing.assert_close(omega["weight"], torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(anchor["weight"], torch.tensor([[2.0, 2.0]]))  # third domain's end


def test_knob_errors_are_clear():
    with pytest.raises(ConfigError, match=r"mechanism 'ewc': lam is required and missing"):
        build_mechanisms([MechanismConfig(name="ewc")])
    with pytest.raises(ConfigError, match="fisher = 'exact'"):
        build_mechanisms([MechanismConfig(name="ewc", lam=1.0, fisher="exact")])
    with pytest.raises(ConfigError, match=r"gamma = 1\.5"):
        build_mechanisms([MechanismConfig(name="online_ewc", lam=1.0, gamma=1.5)])
    with pytest.raises(ConfigError, match=r"cannot be combined.*one decayed Fisher"):
        build_mechanisms(
            [MechanismConfig(name="ewc", lam=1.0), MechanismConfig(name="online_ewc", lam=1.0)]
        )


EWC = [{"name": "ewc", "lam": 1e4, "samples": 8, "chunk": 8}]


def test_ewc_penalises_the_second_domain_and_counts_fisher_flops(fixture_data, tmp_path):
    record = run(fixture_data, tmp_path / "r", EWC, log_every=1)
    curves = pd.read_parquet(tmp_path / "r" / "curves.parquet")
    penalty = curves.groupby("stage")["ewc/penalty"].apply(lambda s: s.fillna(0).to_list())
    assert penalty[0] == [0.0] * 4  # no finished domain yet
    assert penalty[1][0] == 0.0 and all(v > 0 for v in penalty[1][1:])  # anchored at stage start
    per_token = 6 * 2 * 64 * 64  # at least 6N per token, N > 2 * 64 * 64 for the micro preset
    fisher_tokens = 8 * 64  # one domain's Fisher (not the last domain's)
    assert record["flops"]["total"]["mechanisms"] > per_token * fisher_tokens


def test_online_ewc_with_empirical_fisher_runs_through_the_trainer(fixture_data, tmp_path):
    mech = [{"name": "online_ewc", "lam": 1e4, "gamma": 0.5, "samples": 4, "fisher": "empirical"}]
    record = run(fixture_data, tmp_path / "r", mech, steps_per_stage=2)
    assert record["metrics"]["loss"] and record["flops"]["total"]["mechanisms"] > 0
