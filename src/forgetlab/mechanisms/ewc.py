"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018).

After each domain, the diagonal Fisher of the model's log-likelihood on that domain's training
text measures how much each weight matters to it; later domains pay
(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2 for moving it (Kirkpatrick eq. 3;
docs/methods.md). The Fisher is the mean of *per-sample* squared scores (``importance.py``).

A sample is one training window; its log-likelihood is the sum of its next-token log-probs, and
the Fisher is divided by the window length so that it is a per-token quantity, on the scale of
the trainer's token-mean loss (lambda then means the same at any context length). With
``fisher = "sampled"`` (default) the next tokens are drawn from the model itself, giving the true
Fisher that EWC's Laplace argument needs; ``"empirical"`` uses the data's tokens, as many
implementations do (the empirical Fisher, a different matrix away from the optimum: Kunstner
et al. 2019).

``ewc`` keeps one penalty term per finished domain, each anchored at that domain's end;
``online_ewc`` keeps one term, F <- gamma * F + F_new anchored at the latest domain's end
(Schwarz et al. 2018, "Progress & Compress", online EWC), so memory and compute do not grow with the stream.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.mechanisms.base import TrainContext, register
from forgetlab.mechanisms.parts.importance import (
    block_size,
    diagonal_fisher,
    draw_windows,
    flops_per_token,
    sequence_log_likelihood,
)
from forgetlab.mechanisms.parts.penalty import ImportancePenalty, Tensors


@register
class EWC(ImportancePenalty):
    """EWC with one quadratic term per finished domain."""

    name = "ewc"
    incompatible = frozenset({"online_ewc"})
    incompatible_reason = "online_ewc is ewc with one decayed Fisher term: choose one of them"
    decay = None

    class Knobs(ImportancePenalty.Knobs):
        samples: int = Field(64, ge=1, description="training windows the Fisher is averaged over")
        fisher: Literal["sampled", "empirical"] = Field(
            "sampled", description="next tokens drawn from the model (true Fisher) or the data's"
        )
        chunk: int = Field(8, ge=1, description="windows per vectorised per-sample-gradient pass")

    def importance(self, ctx: TrainContext) -> Tensors:
        k = self.knobs
        x, y = draw_windows(ctx, ctx.stage, k.samples)
        if k.fisher == "sampled":
            y = self._sample_next_tokens(ctx, x)
        fisher = diagonal_fisher(ctx.model, sequence_log_likelihood, [x, y], chunk=k.chunk)
        self.count_flops(flops_per_token(ctx, "train") * x.numel())
        return {n: f / block_size(ctx) for n, f in fisher.items()}

    def _sample_next_tokens(self, ctx: TrainContext, x: torch.Tensor) -> torch.Tensor:
        was_training = ctx.model.training
        ctx.model.eval()
        with torch.no_grad(), ctx.autocast():
            logits = ctx.model(x)
        ctx.model.train(was_training)
        probs = F.softmax(logits.float().flatten(0, 1), dim=-1)
        self.count_flops(flops_per_token(ctx, "forward") * x.numel())
        return torch.multinomial(probs, 1, generator=ctx.generator).view_as(x)


@register
class OnlineEWC(EWC):
    """Online EWC: one running Fisher, decayed by gamma at every new domain."""

    name = "online_ewc"
    incompatible = frozenset({"ewc"})
    incompatible_reason = "online_ewc is ewc with one decayed Fisher term: choose one of them"

    class Knobs(EWC.Knobs):
        gamma: float = Field(
            1.0, ge=0.0, le=1.0, description="decay of the old Fisher when a domain is added"
        )

    @property
    def decay(self) -> float:  # type: ignore[override]
        return self.knobs.gamma
