"""Generative replay: rehearse on text the model itself wrote, instead of stored real text.

Deep generative replay (Shin et al. 2017) keeps a generator of past data rather than the data; a
language model is such a generator. At the end of each stage (but the last, after which nothing
trains) the current model samples sequences for the domain it has just learned -- from a real
domain prefix or from the end-of-text token, with temperature and top-k -- into a memory where
every seen domain holds floor(K/t) of them. Later batches mix those rows in exactly as ``replay``
mixes real ones. Generation is counted in :meth:`flops`.
"""

from __future__ import annotations

from pydantic import Field

from forgetlab.mechanisms.base import TrainContext, register
from forgetlab.mechanisms.parts.buffers import BatchReplay, SequenceBuffer
from forgetlab.mechanisms.parts.sampling import GenerationKnobs, generate_sequences


@register
class GenerativeReplay(BatchReplay):
    """Replay of model-generated sequences, one balanced share per seen domain."""

    name = "generative_replay"
    incompatible = frozenset({"replay"})

    class Knobs(BatchReplay.Knobs, GenerationKnobs):
        capacity: int = Field(256, ge=1, description="generated sequences kept, over all domains")

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs, SequenceBuffer(knobs.capacity, "balanced"))
        self.knobs: GenerativeReplay.Knobs = knobs

    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage == len(ctx.stream.domains) - 1:
            return
        n = self.knobs.capacity // (ctx.stage + 1)
        x, y, spent = generate_sequences(ctx, ctx.stage, n, self.knobs)
        self.buffer.add(x, y, ctx.stage, ctx.generator)
        self.count_flops(spent)
        ctx.log["generative_replay/size"] = float(len(self.buffer))
