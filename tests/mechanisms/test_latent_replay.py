"""Latent replay: lower stack frozen after stage 1, stored activations replay their targets' loss
through the upper stack, memory accounting, exact resume."""

import pytest
import torch
import torch.nn.functional as F

from forgetlab.config import ConfigError
from forgetlab.mechanisms.latent_replay import LatentReplay, lower_hidden, upper_logits
from forgetlab.train import Trainer
from micro_run import micro_config

LATENT = {"name": "latent_replay", "layer": 1, "capacity": 12, "replay_rows": 2}


@pytest.fixture(scope="module")
def replayed(fixture_data, tmp_path_factory):
    """Three domains; model state at every evaluation, stage-1 rows' token ids before the drop."""
    states, stage1 = [], {}
    evaluate, stage_end = Trainer._evaluate_all, LatentReplay.on_stage_end

    def spy(self, stage):
        states.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return evaluate(self, stage)

    def keep_ids(self, ctx):
        if ctx.stage == 0:
            held = (self.buffer.domain >= 0).nonzero().flatten()
            stage1["slots"], stage1["ids"] = held, self.buffer.y[held, 1].clone()
        stage_end(self, ctx)
        if ctx.stage == 0:
            stage1["act"] = self.buffer.x[stage1["slots"]].clone()

    Trainer._evaluate_all, LatentReplay.on_stage_end = spy, keep_ids
    try:
        cfg = micro_config(fixture_data, [LATENT], domains=3)
        trainer = Trainer(cfg, tmp_path_factory.mktemp("latent") / "r", progress=False)
        record = trainer.run()
    finally:
        Trainer._evaluate_all, LatentReplay.on_stage_end = evaluate, stage_end
    return trainer, record, states, stage1


def test_layers_below_the_cut_are_unchanged_after_stage_one(replayed):
    _, _, states, _ = replayed
    lower = [k for k in states[0] if k.startswith(("wte.", "positions.", "blocks.0."))]
    upper = [k for k in states[0] if k.startswith(("blocks.1.", "ln_f."))]
    assert lower and upper
    assert any(not torch.equal(states[0][k], states[1][k]) for k in lower)  # stage 1 trains all
    for later in states[2:]:
        for k in lower:
            assert torch.equal(states[1][k], later[k]), k
    assert any(not torch.equal(states[1][k], states[3][k]) for k in upper)


def test_stored_activations_replay_their_targets_loss_through_the_upper_layers(replayed):
    trainer, _, _, stage1 = replayed
    model, mech = trainer.model.eval(), trainer.mechanisms[0]
    ids, act = stage1["ids"], stage1["act"]
    assert (ids >= 0).all() and len(ids) == 12
    with torch.no_grad():
        # the lower stack is frozen: the stage-1 activation is still what it computes now
        assert torch.equal(lower_hidden(model, ids, 1), act)
        slots = mech.buffer.rows_of(0)
        x, y = mech.buffer.x[slots], mech.buffer.y[slots]
        assert (y[:, 1] == -1).all()  # raw token ids are dropped once the stack is frozen
        full = next(i for i in range(len(ids)) if torch.equal(act[i], x[0]))
        targets = y[:1, 0]
        replay = F.cross_entropy(upper_logits(model, x[:1], 1).flatten(0, 1), targets.flatten())
        direct = F.cross_entropy(model(ids[full : full + 1]).flatten(0, 1), targets.flatten())
    assert replay.item() == pytest.approx(direct.item(), rel=1e-6)


def test_memory_holds_capacity_rows_of_activation_and_targets(replayed):
    trainer, record, _, _ = replayed
    mech = trainer.mechanisms[0]
    buf = mech.buffer
    assert len(buf) == 12 and buf.offered == 3 * 4 * 4  # 3 stages x 4 steps x 4 stream rows
    assert buf.x.shape == (12, 64, 64) and buf.y.shape == (12, 2, 64)
    assert mech.stored_bytes() == 12 * (64 * 64 * 4 + 2 * 64 * 8)
    per_stage = record["flops"]["per_stage"]
    # stage 1: the recompute of 12 rows through the lower stack; later: 2 rows x 4 steps replayed
    assert per_stage[0]["mechanisms"] == pytest.approx(12 * 64 * mech.lower_per_token)
    assert per_stage[1]["mechanisms"] == pytest.approx(4 * 2 * 64 * mech.upper_per_token)
    assert all(c["latent_replay/replay"] > 0 for c in record_curves(trainer, stage=1))


def record_curves(trainer, stage):
    return [c for c in trainer.state.curves if c.get("stage") == stage and "train_loss" in c]


def test_a_cut_with_no_block_above_is_refused(fixture_data, tmp_path):
    cfg = micro_config(fixture_data, [{**LATENT, "layer": 2}])
    with pytest.raises(ConfigError, match=r"layer = 2 leaves no block above"):
        Trainer(cfg, tmp_path / "bad", progress=False).run()
