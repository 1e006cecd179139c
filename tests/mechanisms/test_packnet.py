"""PackNet: old domains' outputs stay bit-identical through later stages of the real Trainer."""

import pytest
import torch

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import build_mechanisms
from forgetlab.train import Trainer
from micro_run import micro_config


@pytest.fixture(scope="module")
def packed(fixture_data, tmp_path_factory):
    """Three stages with pruning and re-training; domain 1's logits and the masks at each eval."""
    probe = torch.randint(0, 512, (3, 64), generator=torch.Generator().manual_seed(0))
    logits, owners = [], []
    original = Trainer._evaluate_all

    def spy(self, stage):
        row = original(self, stage)
        pack = next(m for m in self.mechanisms if m.name == "packnet")
        with pack.eval_scope(self.ctx, 0), torch.no_grad():
            logits.append(self.model(probe.to(self.device)).clone())
        owners.append({n: o.clone() for n, o in pack.owner.items()})
        return row

    Trainer._evaluate_all = spy
    try:
        cfg = micro_config(
            fixture_data, [{"name": "packnet", "keep": 0.5, "retrain_steps": 2}], domains=3
        )
        record = Trainer(cfg, tmp_path_factory.mktemp("packnet") / "r", progress=False).run()
    finally:
        Trainer._evaluate_all = original
    return record, logits, owners


def test_old_domain_outputs_are_bit_identical_after_later_stages(packed):
    record, logits, _ = packed
    # logits[0] before training, logits[s] after stage s: domain 1 under mask 1 never moves
    assert torch.equal(logits[1], logits[2]) and torch.equal(logits[1], logits[3])
    assert not torch.equal(logits[0], logits[1])
    r = record["R"]["loss"]
    assert r[1][0] == r[2][0] == r[3][0]  # domain 1, evaluated by the trainer with masks 1..1
    assert r[2][1] == r[3][1]  # domain 2 with masks 1..2 after stage 3
    assert r[2][1] < r[1][1]  # and the second domain did learn in the freed weights


def test_each_domain_keeps_half_of_each_layers_free_weights(packed):
    _, _, owners = packed
    for name, final in owners[-1].items():
        n = final.numel()
        first = round(0.5 * n)
        second = round(0.5 * (n - first))
        third = round(0.5 * (n - first - second))
        counts = [int((final == d).sum()) for d in (1, 2, 3)]
        assert counts == [first, second, third], name
        assert torch.equal(owners[1][name] == 1, final == 1)  # an owner never changes


def test_packnet_refuses_a_penalty_on_its_frozen_weights_with_the_reason():
    with pytest.raises(ConfigError, match=r"cannot be combined with \['ewc'\].*pruned zeros"):
        build_mechanisms([MechanismConfig(name="packnet"), MechanismConfig(name="ewc", lam=1.0)])
    with pytest.raises(ConfigError, match=r"keep = 0\.0"):
        build_mechanisms([MechanismConfig(name="packnet", keep=0.0)])
