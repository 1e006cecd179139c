"""Sleep: offline consolidation phases on memory samples only (the T/W/R ablation's R,
docs/cl_mechanisms.md).

Every ``every`` (F) optimizer steps on the stream, the model takes ``steps`` (S) extra optimizer
steps on batches drawn only from its memory -- no new data -- as a fixed-frequency "sleep" replay.
The ablation fixes one recipe per run, so that replay variants do not confound it: the memory
holds either real stream samples (kept by a buffer policy, offered after each step's forward pass
like ``replay``) or text the model generated at each stage end (as in ``generative_replay``; then
the first stage has no memory yet and sleeps only from the second stage on). The extra steps go
through ``ctx.extra_step``, which the trainer counts as training FLOPs; :meth:`flops` adds only
generation and herding passes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from forgetlab.config import RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register
from forgetlab.mechanisms.parts.buffers import (
    Policy,
    SequenceBuffer,
    check_capacity,
    commit_herding,
    write_stream_rows,
)
from forgetlab.mechanisms.parts.sampling import GenerationKnobs, generate_sequences


@register
class Sleep(Mechanism):
    """S optimizer steps on memory samples every F stream steps."""

    name = "sleep"
    saved = ("buffer", "stream_steps", "phases")

    class Knobs(GenerationKnobs):
        every: int = Field(50, ge=1, description="F: stream optimizer steps between sleep phases")
        steps: int = Field(5, ge=1, description="S: optimizer steps per sleep phase")
        source: Literal["real", "generated"] = "real"
        capacity: int = Field(256, ge=1, description="memory size in sequences")
        policy: Policy = Field("reservoir", description="how real samples are kept")
        herding_pool: int | None = Field(
            None, ge=1, description="candidates per domain herding picks from; None = 4 x capacity"
        )
        batch_size: int | None = Field(None, ge=1, description="None = train.batch_size")

        @model_validator(mode="after")
        def _knobs_match_source(self) -> Sleep.Knobs:
            generation = set(GenerationKnobs.model_fields) & self.model_fields_set
            if self.source == "real" and generation:
                raise ValueError(f"{sorted(generation)} apply to source='generated', not 'real'")
            real = {"policy", "herding_pool"} & self.model_fields_set
            if self.source == "generated" and real:
                raise ValueError(f"{sorted(real)} apply to source='real', not 'generated'")
            if self.herding_pool is not None and self.policy != "herding":
                raise ValueError(f"herding_pool applies to policy='herding', not {self.policy!r}")
            return self

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: Sleep.Knobs = knobs
        policy = knobs.policy if knobs.source == "real" else "balanced"
        pool = knobs.herding_pool or 4 * knobs.capacity
        self.buffer = SequenceBuffer(knobs.capacity, policy, pool)
        self.pending = False
        self.sleeping = False
        self.stream_steps = 0
        self.phases = 0

    @classmethod
    def estimate_flops(
        cls, cfg: RunConfig, knobs: Any, steps_per_stage: int, per_token: dict[str, int]
    ) -> float | None:
        """A real-sample memory is non-empty from the first stream step on, so a phase of S
        steps falls on every F-th stream step of the run (counted across stages); generated
        memories and herding add passes whose count depends on the run."""
        if knobs.source != "real" or knobs.policy == "herding":
            return None
        phases = steps_per_stage * len(cfg.data.domains) // knobs.every
        rows = knobs.batch_size or cfg.train.batch_size
        return float(phases * knobs.steps * rows * cfg.model.block_size * per_token["train"])

    def check_run(self, run: RunConfig) -> None:
        check_capacity(self.knobs.capacity, self.buffer.policy, run, self.name)

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        self.pending = self.knobs.source == "real"
        return batch

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.pending:  # a stream batch, not one of the sleep steps
            self.pending = False
            write_stream_rows(self.buffer, ctx, batch, output)
        return {}

    def after_step(self, ctx: TrainContext) -> None:
        if self.sleeping:  # the hook also runs after each of our own extra steps
            return
        self.stream_steps += 1
        if self.stream_steps % self.knobs.every or len(self.buffer) == 0:
            return
        assert ctx.extra_step is not None, "sleep needs a trainer that offers extra_step"
        n = self.knobs.batch_size or ctx.config.train.batch_size
        self.sleeping = True
        try:
            losses = []
            for _ in range(self.knobs.steps):
                x, y, _ = self.buffer.sample(n, ctx.generator)
                replayed = torch.ones(n, dtype=torch.bool, device=x.device)
                losses.append(ctx.extra_step(Batch(x, y, None, ctx.stage, replayed)))
        finally:
            self.sleeping = False
        self.phases += 1
        ctx.log["sleep/loss"] = sum(losses) / len(losses)
        ctx.log["sleep/phases"] = float(self.phases)

    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage == len(ctx.stream.domains) - 1:  # nothing trains after the last stage
            return
        if self.knobs.source == "generated":
            n = self.knobs.capacity // (ctx.stage + 1)
            x, y, spent = generate_sequences(ctx, ctx.stage, n, self.knobs)
            self.buffer.add(x, y, ctx.stage, ctx.generator)
            self.count_flops(spent)
        elif self.buffer.policy == "herding":
            self.count_flops(commit_herding(self.buffer, ctx))
