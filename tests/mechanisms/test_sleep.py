"""Sleep: exactly S extra optimizer steps on memory samples every F stream steps."""

import pytest

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import build_mechanisms
from forgetlab.mechanisms.parts.sampling import generation_flops
from forgetlab.train import Trainer
from forgetlab.train.step import StepRunner
from micro_run import micro_config

STEPS = 4


def run_with_sleep(fixture_data, tmp_path, monkeypatch, **knobs):
    cfg = micro_config(fixture_data, [{"name": "sleep", **knobs}], seed=4, steps=STEPS, lr=1e-3,
                       log_every=1)  # fmt: skip
    extra = []
    original = StepRunner.extra_step

    def counting(self, batch):
        assert batch.weights is None and batch.replayed.all()  # memory rows only, never gated
        extra.append((self.ctx.stage, self.ctx.step, tuple(batch.x.shape)))
        return original(self, batch)

    monkeypatch.setattr(StepRunner, "extra_step", counting)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    return trainer, trainer.run(), extra


def test_real_memory_sleeps_s_steps_every_f_steps(fixture_data, tmp_path, monkeypatch):
    trainer, record, extra = run_with_sleep(
        fixture_data, tmp_path, monkeypatch, every=2, steps=3, capacity=6, batch_size=2
    )
    # 8 stream steps; after stream steps 2, 4 (stage 1) and 6, 8 (stage 2): 3 steps of 2 rows
    assert extra == [(s, k, (2, 64)) for s, k in ((0, 1), (0, 3), (1, 1), (1, 3)) for _ in range(3)]
    assert trainer.mechanisms[0].phases == 4
    per_tok = record["flops"]["train_per_token"]
    for stage in record["flops"]["per_stage"]:
        assert stage["extra_steps"] == pytest.approx(2 * 3 * 2 * 64 * per_tok)
        assert stage["mechanisms"] == 0  # the trainer counts the steps; nothing else was spent
        assert stage["train_tokens"] == STEPS * 4 * 64


def test_generated_memory_sleeps_from_the_second_stage(fixture_data, tmp_path, monkeypatch):
    trainer, record, extra = run_with_sleep(
        fixture_data, tmp_path, monkeypatch, every=2, steps=2, source="generated", capacity=3,
        prompt="bos", top_k=10, gen_batch_size=3,
    )
    # the first stage has no memory yet; its end generates floor(3/1) sequences from the BOS token
    assert extra == [(1, k, (4, 64)) for k in (1, 3) for _ in range(2)]
    x, _, dom = trainer.mechanisms[0].buffer.contents()
    assert dom.tolist() == [0, 0, 0]
    assert (x[:, 0] == trainer.stream.tokenizer.eot_id).all()
    stages = record["flops"]["per_stage"]
    assert stages[0]["mechanisms"] == pytest.approx(generation_flops(trainer.model_cfg, 3, 1, 64))
    assert stages[0]["extra_steps"] == 0 and stages[1]["mechanisms"] == 0


def test_knobs_must_match_the_source():
    with pytest.raises(ConfigError, match="apply to source='generated'"):
        build_mechanisms([MechanismConfig(name="sleep", temperature=0.5)])
    with pytest.raises(ConfigError, match="apply to source='real'"):
        build_mechanisms([MechanismConfig(name="sleep", source="generated", policy="ring")])
    with pytest.raises(ConfigError, match="every"):
        build_mechanisms([MechanismConfig(name="sleep", every=0)])


def test_resumed_run_with_gate_replay_and_sleep_is_bitwise_equal(fixture_data, tmp_path,
                                                                 killed_run):
    import torch

    from forgetlab.models import load_model

    cfg = micro_config(
        fixture_data,
        [{"name": "selective_write", "write_fraction": 0.5, "granularity": "sequence"},
         {"name": "replay", "capacity": 6, "policy": "balanced"},
         {"name": "sleep", "every": 2, "steps": 1, "source": "generated", "capacity": 2,
          "gen_batch_size": 2}],
        seed=5, steps=STEPS, lr=1e-3, log_every=1, checkpoint_every=5,
    )  # fmt: skip
    ref_trainer = Trainer(cfg, tmp_path / "ref", progress=False)
    ref = ref_trainer.run()
    killed_run(cfg, tmp_path / "resumed", at=7)  # stage 2, step 3: after the checkpoint at global step 5
    resumed_trainer = Trainer(cfg, tmp_path / "resumed", progress=False)
    resumed = resumed_trainer.run()

    assert resumed["R"] == ref["R"]
    assert resumed["flops"]["per_stage"] == ref["flops"]["per_stage"]
    a = load_model(tmp_path / "ref" / "checkpoints" / "latest" / "model.safetensors")
    b = load_model(tmp_path / "resumed" / "checkpoints" / "latest" / "model.safetensors")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    for ma, mb in zip(ref_trainer.mechanisms, resumed_trainer.mechanisms, strict=True):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
    sw_a, sw_b = ref_trainer.mechanisms[0], resumed_trainer.mechanisms[0]
    assert sw_a.stage_fractions == sw_b.stage_fractions and torch.equal(sw_a.history, sw_b.history)
