"""Generative replay: rehearse on text the model itself wrote, instead of stored real text.

Deep generative replay (Shin et al. 2017) keeps a generator of past data rather than the data; a
language model is such a generator. At the end of each stage (but the last, after which nothing
trains) the current model samples sequences for the domain it has just learned -- from a real
domain prefix or from the end-of-text token, with temperature and top-k -- into a memory where
every seen domain holds floor(K/t) of them. Later batches mix those rows in exactly as ``replay``
mixes real ones. Generation is counted in :meth:`flops`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from forgetlab.mechanisms.base import Batch, Mechanism, TrainContext, register
from forgetlab.mechanisms.buffers import MixKnobs, SequenceBuffer, mix_in
from forgetlab.mechanisms.replay import check_capacity
from forgetlab.mechanisms.sampling import GenerationKnobs, generate_sequences


@register
class GenerativeReplay(Mechanism):
    """Replay of model-generated sequences, one balanced share per seen domain."""

    name = "generative_replay"
    incompatible = frozenset({"replay"})
    incompatible_reason = (
        "both replace a share of every batch by their own memory's rows, so together they would "
        "silently double the replayed share; choose real (replay) or generated "
        "(generative_replay) samples"
    )

    class Knobs(MixKnobs, GenerationKnobs):
        capacity: int = Field(256, ge=1, description="generated sequences kept, over all domains")

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: GenerativeReplay.Knobs = knobs
        self.buffer = SequenceBuffer(knobs.capacity, "balanced")
        self.device = torch.device("cpu")
        self.spent = 0.0

    def setup(self, ctx: TrainContext) -> None:
        check_capacity(self.knobs.capacity, "balanced", ctx, self.name)
        self.device = ctx.device

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        n_old = round(batch.x.shape[0] * self.knobs.old_share())
        if n_old == 0 or len(self.buffer) == 0:
            return batch
        x, y, _ = self.buffer.sample(n_old, ctx.generator)
        return mix_in(batch, x, y)

    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage == len(ctx.stream.domains) - 1:
            return
        n = self.knobs.capacity // (ctx.stage + 1)
        x, y, spent = generate_sequences(ctx, ctx.stage, n, self.knobs)
        self.buffer.add(x, y, ctx.stage, ctx.generator)
        self.spent += spent
        ctx.log["generative_replay/size"] = float(len(self.buffer))

    def flops(self, ctx: TrainContext) -> float:
        return self.spent

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "flops": self.spent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"], self.device)
        self.spent = state["flops"]
