"""Selective write: only surprising or uncertain data updates the weights (the T/W/R ablation's W,
docs/cl_mechanisms.md).

Before each micro-batch the current model scores every stream token: surprise is its negative
log-likelihood, uncertainty the entropy of the predictive distribution. A token (or, with
``granularity = "sequence"``, a whole sequence by its mean score) is written -- its loss weight
stays 1 -- when its score stands out against running statistics of recent scores: either its
z-score against the scores of the last ``window`` stream tokens reaches ``threshold``, or it lies
in the top ``write_fraction`` of them (a running quantile, so the fraction written tracks the
target). The window counts tokens in both granularities (a sequence score stands for its
``block_size`` tokens), so the statistics forget the previous domain within the same number of
tokens whichever gate is used; a window counted in sequences would span several stages and make
the quantile lag behind every domain switch. Gated
tokens get weight 0 and hence exactly zero gradient (the trainer's loss is sum(w*l)/sum(w)).
Rows replayed from a memory are always written. A memory mechanism (``replay``, ``sleep``) stores
a stream row only when the gate wrote at least half its tokens, so one gate decides both what the
weights learn and what the memory keeps. The scoring pass is one extra forward per micro-batch,
counted in :meth:`flops`; the fraction actually written is logged per stage.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from forgetlab.config import RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, TrainContext, register
from forgetlab.models import model_flops_per_token


def token_scores(logits: torch.Tensor, y: torch.Tensor, signal: str) -> torch.Tensor:
    """(B, T) surprise = -log p(y_t) or uncertainty = H(p(. | x_<t)), in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    if signal == "surprise":
        return -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -(logp.exp() * logp).sum(-1)


@register
class SelectiveWrite(Mechanism):
    """Gate each token's (or sequence's) gradient by its surprise or uncertainty."""

    name = "selective_write"
    saved = ("history", "written", "offered", "stage_fractions")

    class Knobs(Mechanism.Knobs):
        signal: Literal["surprise", "uncertainty"] = "surprise"
        granularity: Literal["token", "sequence"] = "token"
        write_fraction: float | None = Field(
            None, gt=0, le=1, description="target share written (running quantile); default 0.5"
        )
        threshold: float | None = Field(
            None, description="write when the score's z-score against the window reaches this"
        )
        window: int = Field(
            8192, ge=2, description="recent stream tokens the running statistics span"
        )

        @model_validator(mode="after")
        def _one_rule(self) -> SelectiveWrite.Knobs:
            if self.write_fraction is not None and self.threshold is not None:
                raise ValueError("give either write_fraction or threshold, not both")
            return self

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: SelectiveWrite.Knobs = knobs
        self.history = torch.zeros(0)  # the last `window` scores, oldest first
        self.written = 0  # gated-in stream tokens this stage
        self.offered = 0  # stream tokens this stage
        self.stage_fractions: list[float] = []

    def setup(self, ctx: TrainContext) -> None:
        self.history = self.history.to(ctx.device)

    def on_stage_start(self, ctx: TrainContext) -> None:
        self.written = self.offered = 0

    @classmethod
    def estimate_flops(
        cls, cfg: RunConfig, knobs: Any, steps_per_stage: int, per_token: dict[str, int]
    ) -> float | None:
        """One scoring forward over every stream micro-batch (memory mechanisms keep the batch
        shape, and extra sleep steps are not scored)."""
        t = cfg.train
        tokens = steps_per_stage * len(cfg.data.domains) * t.grad_accum * t.batch_size
        return float(tokens * cfg.model.block_size * per_token["forward"])

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        stream = torch.ones(batch.x.shape[0], dtype=torch.bool, device=batch.x.device)
        if batch.replayed is not None:
            stream = ~batch.replayed
        with torch.no_grad(), ctx.autocast():
            logits = ctx.model(batch.x)
        seq = batch.x.shape[1]
        self.count_flops(
            float(model_flops_per_token(ctx.model.config, seq)["forward"] * batch.x.numel())
        )
        scores = token_scores(logits, batch.y, self.knobs.signal)
        sequences = self.knobs.granularity == "sequence"
        if sequences:
            scores = scores.mean(1, keepdim=True)
        gate = self.gate(scores, stream, tokens_per_score=seq if sequences else 1)
        weights = gate.float().expand(-1, seq).clone()
        weights[~stream] = 1.0
        if batch.weights is not None:
            weights = weights * batch.weights
        self.written += int(weights[stream].gt(0).sum())
        self.offered += int(stream.sum()) * seq
        ctx.log["selective_write/write_fraction"] = self.written / max(self.offered, 1)
        return Batch(batch.x, batch.y, weights, batch.domain, batch.replayed)

    def gate(
        self, scores: torch.Tensor, stream: torch.Tensor, tokens_per_score: int = 1
    ) -> torch.Tensor:
        """True where a stream score is written. The running statistics span the scores of the
        last ``window`` tokens including this batch's (all of this batch's when it alone is
        longer); each score stands for ``tokens_per_score`` tokens."""
        fresh = scores[stream].flatten().float()
        keep = max(2, self.knobs.window // tokens_per_score)
        recent = torch.cat([self.history, fresh])[-max(keep, fresh.numel()) :]
        self.history = recent[-keep:]
        if recent.numel() == 0:
            return torch.zeros_like(scores, dtype=torch.bool)
        if self.knobs.threshold is not None:
            std = recent.std(correction=0).clamp_min(1e-8)
            return (scores - recent.mean()) / std >= self.knobs.threshold
        fraction = self.knobs.write_fraction or 0.5
        return scores >= torch.quantile(recent, 1.0 - fraction)

    def on_stage_end(self, ctx: TrainContext) -> None:
        self.stage_fractions.append(self.written / max(self.offered, 1))
