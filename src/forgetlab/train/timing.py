"""Wall-clock seconds of a run per stage and phase (data, forward, backward, optimizer,
mechanisms, eval), the timing part of its record."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from forgetlab.analysis.columns import PHASES
from forgetlab.train.device import synchronize


class PhaseTimer:
    """Wall-clock seconds per phase and stage; synchronises CUDA so GPU time lands in its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.paused = False  # inside a mechanism's extra step: its time belongs to the hook
        self.stages: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, stage: int, phase: str, t0: float) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        if not self.paused:
            self.stages[stage][phase] += now - t0
        return now

    def to_dict(self) -> dict[str, Any]:
        per_stage = [dict(self.stages[s]) for s in sorted(self.stages)]
        total = {p: sum(s[p] for s in per_stage) for p in PHASES}
        return {"per_stage": per_stage, "total": total}

    def load(self, state: dict[str, Any]) -> None:
        for s, phases in enumerate(state["per_stage"]):
            self.stages[s].update(phases)

    state_dict = to_dict  # the checkpoint's saved form is the record's
    load_state_dict = load


class TokenRate:
    """Training tokens per second over a window: since it began, or since the last reading."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> float:
        """The rate over the window, and a new window from now."""
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t0, 1e-9)
        self.t0, self.tokens = now, 0
        return rate
