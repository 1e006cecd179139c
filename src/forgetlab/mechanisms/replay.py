"""Experience replay (ER): rehearse stored stream samples inside every new batch.

Chaudhry et al. 2019 ("On tiny episodic memories in continual learning"): a small memory of past
samples, mixed into each batch of new data, is a strong baseline against forgetting (document 002,
section 2.1.2). Here a share of each batch's rows is replaced by memory rows (the shape and so the
FLOPs of a step do not change), and the stream rows are offered to the memory under one of the
policies of :mod:`forgetlab.mechanisms.buffers`. Rows are written after the forward pass, from
the ``loss`` hook, so the loss policy reuses the step's own per-token losses and a selective-write
gate (listed before or after replay) decides which rows are stored.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register
from forgetlab.mechanisms.buffers import (
    PER_DOMAIN,
    MixKnobs,
    Policy,
    SequenceBuffer,
    mix_in,
    stream_rows,
)
from forgetlab.models import model_flops_per_token


def write_stream_rows(
    buffer: SequenceBuffer, ctx: TrainContext, batch: Batch, output: StepOutput
) -> None:
    """Offer the batch's stream rows that passed any write gate, scored by their mean loss."""
    keep = stream_rows(batch.weights, batch.replayed, batch.x.shape[0]).to(batch.x.device)
    if keep.any():
        scores = output.token_loss.detach().float().mean(1)[keep].cpu()
        buffer.add(batch.x[keep], batch.y[keep], batch.domain, ctx.generator, scores)


@torch.no_grad()
def commit_herding(buffer: SequenceBuffer, ctx: TrainContext, batch_size: int = 64) -> float:
    """Herd the current domain's exemplars from the buffer's pool with the current model's
    features (mean-pooled final hidden state, as iCaRL uses the current phi); returns the forward
    FLOPs of the feature passes."""
    assert buffer.pool is not None
    x, _, _ = buffer.pool.contents()
    if len(x) == 0:
        return 0.0
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        feats = []
        for i in range(0, len(x), batch_size):
            with ctx.autocast():
                feats.append(model.hidden(x[i : i + batch_size]).float().mean(1))
    finally:
        model.train(was_training)
    buffer.commit_herding(torch.cat(feats), ctx.generator)
    seq = x.shape[1]
    return float(model_flops_per_token(model.config, seq)["forward"] * seq * len(x))


def check_capacity(capacity: int, policy: str, ctx: TrainContext, who: str) -> None:
    """Per-domain policies give floor(K / t) slots per domain: K below the number of domains would
    leave the last domains no slot at all."""
    n = len(ctx.stream.domains)
    if policy in PER_DOMAIN and capacity < n:
        raise ConfigError(
            f"mechanism {who!r}: capacity = {capacity} with policy = {policy!r} gives "
            f"floor({capacity}/{n}) = 0 slots per domain at the last of {n} domains; "
            f"use capacity >= {n}"
        )


@register
class Replay(Mechanism):
    """Experience replay with a reservoir, ring, balanced, herding or loss-ranked memory."""

    name = "replay"
    incompatible = frozenset({"generative_replay"})
    incompatible_reason = (
        "both replace a share of every batch by their own memory's rows, so together they would "
        "silently double the replayed share; choose real (replay) or generated "
        "(generative_replay) samples"
    )

    class Knobs(MixKnobs):
        capacity: int = Field(256, ge=1, description="memory size in sequences")
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
        super().__init__(knobs)
        self.knobs: Replay.Knobs = knobs
        pool = knobs.herding_pool or 4 * knobs.capacity
        self.buffer = SequenceBuffer(knobs.capacity, knobs.policy, pool)
        self.device = torch.device("cpu")
        self.pending = False  # make_batch ran and loss has not yet written this batch's rows
        self.spent = 0.0

    @classmethod
    def estimate_flops(
        cls, cfg: RunConfig, knobs: Any, steps_per_stage: int, per_token: dict[str, int]
    ) -> float | None:
        """Replayed rows replace stream rows (the batch keeps its shape): no extra FLOPs, except
        herding's feature passes, which depend on what the stream offered."""
        return None if knobs.policy == "herding" else 0.0

    def setup(self, ctx: TrainContext) -> None:
        check_capacity(self.knobs.capacity, self.knobs.policy, ctx, self.name)
        self.device = ctx.device

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        self.pending = True
        n_old = round(batch.x.shape[0] * self.knobs.old_share())
        if n_old == 0 or len(self.buffer) == 0:
            return batch
        x, y, _ = self.buffer.sample(n_old, ctx.generator)
        return mix_in(batch, x, y)

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.pending:  # not during another mechanism's extra (sleep) steps
            self.pending = False
            write_stream_rows(self.buffer, ctx, batch, output)
            ctx.log["replay/size"] = float(len(self.buffer))
        return {}

    def on_stage_end(self, ctx: TrainContext) -> None:
        last = ctx.stage == len(ctx.stream.domains) - 1  # nothing trains after the last stage
        if self.knobs.policy == "herding" and not last:
            self.spent += commit_herding(self.buffer, ctx)

    def flops(self, ctx: TrainContext) -> float:
        return self.spent

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "flops": self.spent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"], self.device)
        self.spent = state["flops"]
