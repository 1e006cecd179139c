"""LoRA per domain: frozen base, routed adapters (no forgetting by construction), merge, resume."""

import pytest
import torch

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import build_mechanisms
from forgetlab.train import Trainer
from micro_run import micro_config

# the block projections only: merging an lm_head adapter would write into the tied embedding
LORA = {"name": "lora", "rank": 4, "alpha": 8.0, "targets": ["c_attn", "c_proj", "c_fc"]}


@pytest.fixture(scope="module")
def adapted(fixture_data, tmp_path_factory):
    """Three domains; the model's full state at every evaluation (before and after each stage)."""
    states = []
    original = Trainer._evaluate_all

    def spy(self, stage):
        states.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return original(self, stage)

    Trainer._evaluate_all = spy
    try:
        cfg = micro_config(fixture_data, [LORA], domains=3, grad_clip=1.0)
        trainer = Trainer(cfg, tmp_path_factory.mktemp("lora") / "r", progress=False)
        record = trainer.run()
    finally:
        Trainer._evaluate_all = original
    return trainer, record, states


def test_base_weights_are_bit_identical_after_every_stage(adapted):
    _, _, states = adapted
    assert len(states) == 4
    for later in states[1:]:
        for name, value in states[0].items():
            assert torch.equal(value, later[name]), name


def test_run_record_counts_the_adapters_as_the_trainable_parameters(adapted):
    trainer, record, _ = adapted
    adapters = sum(p.numel() for p in trainer.mechanisms[0].parameters())
    assert adapters > 0
    assert record["parameters"]["mechanisms"] == adapters
    # the base is frozen and, at the end, only the last domain's adapter set trains
    assert record["parameters"]["trainable"] == adapters // 3
    assert record["parameters"]["total"] == trainer.model.num_params() + adapters


def test_each_domain_is_evaluated_with_its_own_adapter_so_nothing_is_forgotten(adapted):
    _, record, _ = adapted
    for kind in ("loss", "accuracy"):
        r = record["R"][kind]
        for j in range(3):
            for later in range(j + 2, 4):  # row s = after stage s; domain j trained in stage j+1
                assert r[later][j] == r[j + 1][j], (kind, later, j)
    loss = record["R"]["loss"]
    assert loss[1][0] < loss[0][0] and loss[2][1] < loss[1][1]  # the adapters did learn


def test_merged_adapter_gives_the_unmerged_logits_and_restores_the_weights(adapted):
    trainer, _, _ = adapted
    lora, model = trainer.mechanisms[0], trainer.model
    probe = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    outs = []
    for merge in (False, True):
        lora.knobs.merge = merge
        with lora.eval_scope(trainer.ctx, 1), torch.no_grad():
            outs.append(model(probe))
    lora.knobs.merge = False
    assert torch.allclose(outs[0], outs[1], atol=1e-5, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(model(probe), outs[0], atol=1e-5)  # route is back on stage 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_base_stages_train_the_base_then_freeze_it_for_the_adapters(fixture_data, tmp_path):
    """base_stages = 1: stage 1 is full fine-tuning (the base changes, no adapter trains); from
    stage 2 on the base is bit-identical and every domain, the base's own included, keeps its
    losses exactly."""
    states = []
    original = Trainer._evaluate_all

    def spy(self, stage):
        states.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return original(self, stage)

    Trainer._evaluate_all = spy
    try:
        cfg = micro_config(fixture_data, [{"name": "lora", "rank": 4, "base_stages": 1}], domains=3)
        trainer = Trainer(cfg, tmp_path / "r", progress=False)
        record = trainer.run()
    finally:
        Trainer._evaluate_all = original
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    for later in states[2:]:
        for name, value in states[1].items():
            assert torch.equal(value, later[name]), name
    lora = trainer.mechanisms[0]
    assert "lm_head" in lora.targets  # a default target: the output layer adapts too
    for adapters in lora.bank.values():  # domain 0's adapter never trained (B stays zero)
        assert adapters[0].B.eq(0).all() and adapters[1].B.ne(0).any()
    loss = record["R"]["loss"]
    for j in range(3):
        for later in range(j + 2, 4):
            assert loss[later][j] == loss[j + 1][j], (later, j)
    assert loss[1][0] < loss[0][0] - 0.1  # the base learned its domain


def test_merge_refuses_an_adapter_on_the_tied_head(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, [{"name": "lora", "merge": True}])
    with pytest.raises(ConfigError, match=r"tied token embedding; leave lm_head out of targets"):
        Trainer(cfg, tmp_path / "bad", progress=False).run()


def test_base_stages_must_leave_a_stage_for_the_adapters(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, [{**LORA, "base_stages": 2}], domains=2)
    with pytest.raises(ConfigError, match=r"base_stages = 2 leaves no stage.*data.domains has 2\); allowed: 0..1"):
        Trainer(cfg, tmp_path / "bad", progress=False).run()


def test_resumed_lora_run_with_a_base_stage_ends_bitwise_equal(fixture_data, tmp_path,
                                                               killed_run):
    """base_stages = 0 resumes in test_resume_every_mechanism; here the base trains first."""
    cfg = micro_config(fixture_data, [{**LORA, "base_stages": 1}], checkpoint_every=3)
    ref_trainer = Trainer(cfg, tmp_path / "ref", progress=False)
    ref = ref_trainer.run()
    killed_run(cfg, tmp_path / "resumed", at=6)  # stage 2, step 2: after the mid-stage checkpoint at global step 3
    resumed_trainer = Trainer(cfg, tmp_path / "resumed", progress=False)
    resumed = resumed_trainer.run()
    assert resumed["R"] == ref["R"]
    a = ref_trainer.mechanisms[0].state_dict()
    b = resumed_trainer.mechanisms[0].state_dict()
    assert a["flops"] == b["flops"] and a["stage"] == b["stage"] == 1
    for name, value in a["bank"].items():
        assert torch.equal(value, b["bank"][name]), name
    assert resumed["flops"]["per_stage"] == ref["flops"]["per_stage"]


def test_lora_refuses_latent_replay_and_unknown_targets_with_reasons(fixture_data, tmp_path):
    with pytest.raises(ConfigError, match=r"cannot be combined with \['latent_replay'\].*lower"):
        build_mechanisms([MechanismConfig(name="lora"), MechanismConfig(name="latent_replay")])
    with pytest.raises(ConfigError, match=r"rank = 0"):
        build_mechanisms([MechanismConfig(name="lora", rank=0)])
    cfg = micro_config(fixture_data, [{"name": "lora", "targets": ["q_proj"]}])
    with pytest.raises(ConfigError, match=r"match no nn.Linear.*c_attn"):
        Trainer(cfg, tmp_path / "bad", progress=False).run()
