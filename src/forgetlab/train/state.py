"""A run's saved state: one declaration of everything a checkpoint holds to resume exactly.

:class:`RunState` lists each part once, in the order it is written. A part is either plain data
(the R matrices, the curves, the start time) or a live object with ``state_dict()`` /
``load_state_dict()`` (the optimizer, the random generators, the FLOP and time accounts, the
mechanisms); :meth:`RunState.state_dict` and :meth:`RunState.load_state_dict` walk the same list,
so what is saved is what is restored. Parts marked ``wallclock`` depend on the wall clock and go
to the checkpoint's ``wallclock.pt``, so that two identical runs write byte-identical
``trainer.pt`` files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from forgetlab.train.flops import FlopsAccount
from forgetlab.train.probes import Probes
from forgetlab.train.rundir import RunDirError
from forgetlab.train.timing import PhaseTimer

WALLCLOCK = {"wallclock": True}
"""Field metadata: the value depends on the wall clock (kept out of the bit-exact trainer.pt)."""
ADDED = {"added": True}
"""Field metadata: a part added after checkpoints were first written; a checkpoint without it
resumes with the part's fresh value."""


@dataclass
class Cursor:
    """Where a checkpoint resumes: ``step`` optimizer steps into ``stage``; ``global_step``
    counts the run's steps."""

    stage: int = 0
    step: int = 0
    global_step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "step": self.step, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stage, self.step = state["stage"], state["step"]
        self.global_step = state["global_step"]


@dataclass
class RunRandomness:
    """Every random generator a run draws from: the global Python, NumPy, torch (and CUDA) ones,
    the run's torch ``generator`` (mechanisms, sampling) and ``data``, the stream's batch sampler,
    reseeded per stage from ``(seed, stage)`` so a stage's batches do not depend on the last."""

    generator: torch.Generator
    data: np.random.Generator
    device: torch.device

    def reseed_data(self, seed: int, stage: int) -> None:
        self.data = np.random.default_rng([seed, stage])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "generator": self.generator.get_state(),
            "data": self.data.bit_generator.state,
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        self.data.bit_generator.state = state["data"]


@dataclass
class MechanismStates:
    """The mechanisms' saved states by name (a mechanism missing from a checkpoint starts fresh)."""

    mechanisms: list[Any]

    def state_dict(self) -> dict[str, Any]:
        return {m.name: m.state_dict() for m in self.mechanisms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m in self.mechanisms:
            m.load_state_dict(state.get(m.name, {}))


@dataclass
class RunState:
    """Everything a checkpoint holds, in the order it is written (``trainer.pt`` keys).

    Plain fields are saved as they are and restored by assignment; a field holding an object with
    ``state_dict()`` / ``load_state_dict()`` is saved with the one and restored in place with the
    other (so the references the trainer and the mechanisms hold stay valid). A new part is a
    new field; mark it ``ADDED`` so that checkpoints written before it still resume.
    """

    config_hash: str
    cursor: Cursor
    optimizer: torch.optim.Optimizer
    rng: RunRandomness
    R: dict[str, list[list[float]]]
    probes_R: Probes = field(metadata=ADDED)  # the data.probes matrices so far
    curves: list[dict[str, Any]] = field(metadata=WALLCLOCK)
    flops: FlopsAccount  # FLOPs and tokens per stage
    timing: PhaseTimer = field(metadata=WALLCLOCK)  # seconds per stage and phase
    mech_flops_at_stage_start: float  # the mechanisms' FLOP meters when this stage began
    mechanisms: MechanismStates
    # stream windows read per domain (no replayed rows): joint training's mixture shows here
    new_data_per_domain: dict[str, int] = field(metadata=ADDED)
    started: str = field(metadata=WALLCLOCK)  # ISO time the run first started (kept across resumes)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.state_dict() if _stateful(value) else value
        return out

    def load_state_dict(self, state: dict[str, Any], where: str = "the checkpoint") -> None:
        """Restore every field from ``state``; one it lacks must be ``ADDED`` (else a
        :class:`RunDirError` names what is missing from ``where``)."""
        missing = [f.name for f in fields(self)
                   if f.name not in state and "added" not in f.metadata]
        if missing:
            raise RunDirError(
                f"{where}: the checkpoint holds no {', '.join(missing)} (written by another "
                "version of forgetlab); delete the run directory to run it again"
            )
        for f in fields(self):
            if f.name not in state:
                continue
            value = getattr(self, f.name)
            if _stateful(value):
                value.load_state_dict(state[f.name])
            else:
                setattr(self, f.name, state[f.name])


WALLCLOCK_KEYS = tuple(f.name for f in fields(RunState) if f.metadata.get("wallclock"))
"""Saved-state keys whose values depend on the wall clock (kept out of trainer.pt)."""


def _stateful(value: object) -> bool:
    return hasattr(value, "state_dict") and hasattr(value, "load_state_dict")
