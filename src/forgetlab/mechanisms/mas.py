"""Memory Aware Synapses (Aljundi et al. 2018): importance = how much the output moves.

After each domain, Omega_i = E_x |d ||F(x)||_2^2 / d theta_i| over that domain's training windows
(eq. 2: the mean of per-sample gradient magnitudes, not the magnitude of a mean gradient), with F
the logits; it needs no labels, so it measures sensitivity of the function rather than of the
loss. Importances accumulate over domains and the penalty (lambda / 2) * sum Omega
(theta - theta*)^2 anchors at the latest domain's end (sec. 4; the paper writes lambda without
the 1/2).
"""

from __future__ import annotations

from pydantic import Field

from forgetlab.mechanisms.base import TrainContext, register
from forgetlab.mechanisms.parts.importance import draw_windows, flops_per_token, output_sensitivity
from forgetlab.mechanisms.parts.penalty import ImportancePenalty, Tensors


@register
class MAS(ImportancePenalty):
    """Memory Aware Synapses: output-sensitivity importance on the shared quadratic penalty."""

    name = "mas"
    decay = 1.0

    class Knobs(ImportancePenalty.Knobs):
        samples: int = Field(
            64, ge=1, description="training windows the importance is averaged over"
        )
        chunk: int = Field(8, ge=1, description="windows per vectorised per-sample-gradient pass")

    def importance(self, ctx: TrainContext) -> Tensors:
        x, _ = draw_windows(ctx, ctx.stage, self.knobs.samples)
        self.count_flops(flops_per_token(ctx, "train") * x.numel())
        return output_sensitivity(ctx.model, x, chunk=self.knobs.chunk)
