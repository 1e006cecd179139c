"""RunState: what a checkpoint saves is what a resume restores, in place, field by field."""

import random

import numpy as np
import pytest
import torch

from forgetlab.train.flops import FlopsAccount
from forgetlab.train.probes import Probes
from forgetlab.train.rundir import RunDirError
from forgetlab.train.state import (
    WALLCLOCK_KEYS,
    Cursor,
    MechanismStates,
    RunRandomness,
    RunState,
)
from forgetlab.train.timing import PhaseTimer


class Counter:
    """A stand-in mechanism with one saved number."""

    name = "counter"

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state.get("n", 0)


def new_state(seed: int = 0) -> tuple[RunState, torch.nn.Linear, Counter]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    mech = Counter()
    state = RunState(
        config_hash="abc",
        cursor=Cursor(),
        optimizer=opt,
        rng=RunRandomness(torch.Generator().manual_seed(seed), np.random.default_rng(seed),
                          torch.device("cpu")),
        R={"loss": [[1.0]]},
        probes_R=Probes([], [], {}),
        curves=[],
        flops=FlopsAccount(6.0, 2.0),
        timing=PhaseTimer(torch.device("cpu")),
        mech_flops_at_stage_start=0.0,
        mechanisms=MechanismStates([mech]),
        new_data_per_domain={"code": 0},
        started="t0",
    )
    return state, model, mech


def draws(state: RunState) -> list[float]:
    return [random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(torch.rand(1, generator=state.rng.generator)), float(state.rng.data.random())]


def test_a_restored_state_continues_exactly_where_the_saved_one_was():
    state, model, mech = new_state()
    model(torch.ones(1, 3)).sum().backward()
    state.optimizer.step()
    state.cursor = Cursor(1, 2, 7)
    state.curves.append({"step": 7, "train_loss": 0.5})
    state.flops.add_train(0, 10)
    state.timing.add(0, "forward", 0.0)
    mech.n = 5
    saved = state.state_dict()
    assert list(saved) == ["config_hash", "cursor", "optimizer", "rng", "R", "probes_R", "curves",
                           "flops", "timing", "mech_flops_at_stage_start", "mechanisms",
                           "new_data_per_domain", "started"]
    assert saved["cursor"] == {"stage": 1, "step": 2, "global_step": 7}
    expected = draws(state)

    fresh, _, fresh_mech = new_state(seed=1)  # other seeds, nothing trained
    generator = fresh.rng.generator
    fresh.load_state_dict(saved)
    assert draws(fresh) == expected
    assert fresh.rng.generator is generator  # restored in place: the mechanisms' handle holds
    assert (fresh.cursor.stage, fresh.cursor.step, fresh.cursor.global_step) == (1, 2, 7)
    assert fresh.curves == state.curves and fresh.flops.stages == state.flops.stages
    assert fresh.timing.stages[0]["forward"] == state.timing.stages[0]["forward"] > 0
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 1 and fresh_mech.n == 5


def test_only_the_wall_clock_fields_stay_out_of_the_exact_file():
    assert set(WALLCLOCK_KEYS) == {"curves", "timing", "started"}
    state, _, _ = new_state()
    state.rng.reseed_data(3, 1)  # a stage's batches come from (seed, stage), not the last stage
    assert state.rng.data.random() == np.random.default_rng([3, 1]).random()


def test_a_checkpoint_without_a_later_added_part_resumes_and_one_without_a_core_part_is_refused():
    state, _, _ = new_state()
    saved = state.state_dict()
    older = {k: v for k, v in saved.items() if k != "probes_R"}  # written before probes existed
    fresh, _, _ = new_state(seed=1)
    untouched = fresh.probes_R.R
    fresh.load_state_dict(older)
    assert fresh.probes_R.R is untouched and fresh.cursor.global_step == saved["cursor"]["global_step"]
    broken = {k: v for k, v in saved.items() if k not in ("rng", "flops")}
    with pytest.raises(RunDirError, match=r"runs/x/checkpoints: the checkpoint holds no rng, flops "
                       r"\(written by another version"):
        fresh.load_state_dict(broken, where="runs/x/checkpoints")
