"""Experience replay (ER): rehearse stored stream samples inside every new batch.

Chaudhry et al. 2019 ("On tiny episodic memories in continual learning"): a small memory of past
samples, mixed into each batch of new data, is a strong baseline against forgetting (see
docs/methods.md). Here a share of each batch's rows is replaced by memory rows (the shape and so the
FLOPs of a step do not change), and the stream rows are offered to the memory under one of the
policies of :mod:`forgetlab.mechanisms.parts.buffers`. Rows are written after the forward pass, from
the ``loss`` hook, so the loss policy reuses the step's own per-token losses and a selective-write
gate (listed before or after replay) decides which rows are stored.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from forgetlab.config import RunConfig
from forgetlab.mechanisms.base import Batch, StepOutput, TrainContext, register
from forgetlab.mechanisms.parts.buffers import (
    BatchReplay,
    Policy,
    SequenceBuffer,
    commit_herding,
    write_stream_rows,
)


@register
class Replay(BatchReplay):
    """Experience replay with a reservoir, ring, balanced, herding or loss-ranked memory."""

    name = "replay"
    incompatible = frozenset({"generative_replay"})

    class Knobs(BatchReplay.Knobs):
        policy: Policy = "reservoir"
        herding_pool: int | None = Field(
            None, ge=1, description="candidates per domain herding picks from; None = 4 x capacity"
        )

        @model_validator(mode="after")
        def _pool_needs_herding(self) -> Replay.Knobs:
            if self.herding_pool is not None and self.policy != "herding":
                raise ValueError(f"herding_pool applies to policy='herding', not {self.policy!r}")
            return self

    def __init__(self, knobs: Knobs) -> None:
        pool = knobs.herding_pool or 4 * knobs.capacity
        super().__init__(knobs, SequenceBuffer(knobs.capacity, knobs.policy, pool))
        self.knobs: Replay.Knobs = knobs
        self.pending = False  # make_batch ran and loss has not yet written this batch's rows

    @classmethod
    def estimate_flops(
        cls, cfg: RunConfig, knobs: Any, steps_per_stage: int, per_token: dict[str, int]
    ) -> float | None:
        """Replayed rows replace stream rows (the batch keeps its shape): no extra FLOPs, except
        herding's feature passes, which depend on what the stream offered."""
        return None if knobs.policy == "herding" else 0.0

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        self.pending = True
        return super().make_batch(ctx, batch)

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.pending:  # not during another mechanism's extra (sleep) steps
            self.pending = False
            write_stream_rows(self.buffer, ctx, batch, output)
            ctx.log["replay/size"] = float(len(self.buffer))
        return {}

    def on_stage_end(self, ctx: TrainContext) -> None:
        last = ctx.stage == len(ctx.stream.domains) - 1  # nothing trains after the last stage
        if self.knobs.policy == "herding" and not last:
            self.count_flops(commit_herding(self.buffer, ctx))
