"""Every registered mechanism resumes a killed run bitwise: the R matrix, the FLOPs, the final
weights and the mechanism's whole saved state match an uninterrupted run.

The test is parametrised over the registry itself, so a new mechanism is in it the moment it is
registered. ``KNOBS`` gives the knobs a micro run needs (required ones, or values that make the
mechanism act within the run's 8 steps); ``MODELS`` the model a mechanism cannot run without.
Nothing is skipped."""

from typing import Any

import pytest
import torch

from forgetlab.mechanisms import MECHANISMS
from forgetlab.models import load_model
from forgetlab.train import Trainer
from forgetlab.train.rundir import RunDir
from micro_run import micro_config

KNOBS: dict[str, dict[str, Any]] = {
    "ewc": {"lam": 10.0, "samples": 8},
    "online_ewc": {"lam": 10.0, "samples": 8, "gamma": 0.9},
    "si": {"lam": 10.0},
    "mas": {"lam": 0.1, "samples": 8},
    "gem": {"memory_per_domain": 4},
    "agem": {"memory_per_domain": 8, "reference_batch": 4},
    "packnet": {"keep": 0.5, "retrain_steps": 1},
    "replay": {"capacity": 5},
    "generative_replay": {"capacity": 8},
    "latent_replay": {"capacity": 8, "replay_rows": 2},
    "sleep": {"every": 2, "steps": 1, "capacity": 8},
    "lora": {"rank": 2},
}
MODELS: dict[str, dict[str, Any]] = {
    # grows and freezes experts: it refuses a dense model
    "lifelong_moe": {"preset": "micro", "ffn": "moe", "moe": {"num_experts": 4, "top_k": 2}},
}


def test_the_tables_name_only_registered_mechanisms():
    assert set(KNOBS) <= set(MECHANISMS) and set(MODELS) <= set(MECHANISMS)


def assert_same(a: Any, b: Any, where: str) -> None:
    """Nested dicts / lists / tensors / numbers equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_killed_run_resumes_bitwise_equal(fixture_data, tmp_path, killed_run, name):
    cfg = micro_config(fixture_data, [{"name": name, **KNOBS.get(name, {})}],
                       model=MODELS.get(name), checkpoint_every=2)
    ref_trainer = Trainer(cfg, tmp_path / "ref", progress=False)
    ref = ref_trainer.run()
    killed_run(cfg, tmp_path / "resumed", at=7)  # stage 2, step 3: after the checkpoint at step 6
    resumed_trainer = Trainer(cfg, tmp_path / "resumed", progress=False)
    resumed = resumed_trainer.run()

    assert resumed["R"] == ref["R"]
    assert resumed["flops"]["per_stage"] == ref["flops"]["per_stage"]
    a = load_model(RunDir(tmp_path / "ref").latest / "model.safetensors")
    b = load_model(RunDir(tmp_path / "resumed").latest / "model.safetensors")
    for (key, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), key
    ref_state = ref_trainer.mechanisms[0].state_dict()
    assert set(ref_state) == {"flops", *MECHANISMS[name].saved_names()}
    assert_same(ref_state, resumed_trainer.mechanisms[0].state_dict(), name)
