"""A run killed mid-stage resumes bitwise equal for the mechanisms whose own test files do not
already check it (replay, sleep + selective_write, ewc, lora, latent_replay and lifelong_moe do):
the R matrix, the FLOPs, the final weights and the mechanism's whole state must match."""

from typing import Any

import pytest
import torch
from micro_run import micro_config

from forgetlab.models import load_model
from forgetlab.train import Trainer
from forgetlab.train.rundir import RunDir

MECHANISMS = {
    "si": {"name": "si", "lam": 10.0},
    "mas": {"name": "mas", "lam": 0.1, "samples": 8},
    "lwf": {"name": "lwf", "alpha": 0.5, "temperature": 2.0},
    "gem": {"name": "gem", "memory_per_domain": 4},
    "agem": {"name": "agem", "memory_per_domain": 8, "reference_batch": 4},
    "packnet": {"name": "packnet", "keep": 0.5},
    "generative_replay": {"name": "generative_replay", "capacity": 8},
}


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
    cfg = micro_config(fixture_data, [MECHANISMS[name]], checkpoint_every=2)
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
    assert_same(ref_trainer.mechanisms[0].state_dict(), resumed_trainer.mechanisms[0].state_dict(),
                name)
