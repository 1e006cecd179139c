"""Lifelong-MoE through the real trainer: old experts frozen bit for bit, exact resume."""

import pandas as pd
import torch

from forgetlab.mechanisms.lifelong_moe import LifelongMoE
from forgetlab.models import load_model
from forgetlab.models.moe import MoE
from forgetlab.train import Trainer
from micro_run import micro_config


def lifelong_config(fixture_data, checkpoint_every=0):
    return micro_config(
        fixture_data,
        [{"name": "lifelong_moe", "new_experts": 2, "kl_weight": 0.5}],
        model={"preset": "micro", "ffn": "moe", "moe": {"num_experts": 4, "top_k": 2}},
        checkpoint_every=checkpoint_every,
    )


def test_lifelong_moe_freezes_old_experts_bit_for_bit_and_resumes_exactly(
    fixture_data, tmp_path, monkeypatch, killed_run
):
    snapshots = {}
    original_start = LifelongMoE.on_stage_start

    def recording(self, ctx):
        original_start(self, ctx)
        if ctx.stage == 1 and "old" not in snapshots:
            layers = [m for m in ctx.model.modules() if isinstance(m, MoE)]
            snapshots["old"] = [[p.detach().clone() for p in m.block_params(0)] for m in layers]
            snapshots["new"] = [[p.detach().clone() for p in m.block_params(1)] for m in layers]

    monkeypatch.setattr(LifelongMoE, "on_stage_start", recording)
    cfg = lifelong_config(fixture_data, checkpoint_every=6)
    ref = Trainer(cfg, tmp_path / "ref", progress=False).run()
    a = load_model(tmp_path / "ref" / "checkpoints" / "latest" / "model.safetensors")
    layers = [m for m in a.modules() if isinstance(m, MoE)]
    assert ref["model"]["moe"]["added_experts"] == [2]
    for layer, old, new in zip(layers, snapshots["old"], snapshots["new"], strict=True):
        assert layer.num_experts == 6 and layer.top_k == 2
        assert all(torch.equal(x, y) for x, y in zip(layer.block_params(0), old, strict=True))
        assert not torch.equal(layer.block_params(1)[1], new[1])  # the new experts trained
    curves = pd.read_parquet(tmp_path / "ref" / "curves.parquet").to_dict("records")
    kl = [r["lifelong_moe/kl"] for r in curves if r["stage"] == 1 and "stage_step" in r]
    assert kl and all(v >= 0 for v in kl)  # KL to the stage-start model, logged per step
    assert all(r["moe/balance"] > 0 for r in curves if r["stage"] == 0 and r["moe/balance"] == r["moe/balance"])

    killed_run(cfg, tmp_path / "resumed", at=8)  # stage 2, after the mid-stage checkpoint at global step 6
    resumed = Trainer(cfg, tmp_path / "resumed", progress=False).run()
    assert resumed["R"] == ref["R"]
    b = load_model(tmp_path / "resumed" / "checkpoints" / "latest" / "model.safetensors")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
