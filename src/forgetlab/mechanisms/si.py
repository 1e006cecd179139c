"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): importance from the training path itself.

During a domain every optimizer step adds -g_i * (theta_i,after - theta_i,before) to a running
path integral omega_i (eq. 3), with g the gradient of the *task* loss: the gradient this
mechanism's own penalty contributed is subtracted analytically, so the integral does not reward
the penalty's own pull. The step is measured as the optimizer really took it (AdamW, clipping,
weight decay included). At the domain's end Omega_i += max(0, omega_i / (Delta_i^2 + xi)) with
Delta_i the parameter's total change over the domain (eq. 5), and the penalty
(lambda / 2) * sum Omega (theta - theta*)^2 anchors at the domain's end (lambda = 2c of the paper).
The only extra compute is element-wise, a few operations per parameter per step.
"""

from __future__ import annotations

import torch
from pydantic import Field

from forgetlab.mechanisms.base import TrainContext, register
from forgetlab.mechanisms.parts.importance import path_integral_importance, trainable
from forgetlab.mechanisms.parts.penalty import ImportancePenalty, Tensors


@register
class SI(ImportancePenalty):
    """Synaptic Intelligence: path-integral importance on the shared quadratic penalty."""

    name = "si"
    decay = 1.0
    saved = ("omega", "stage_start")

    class Knobs(ImportancePenalty.Knobs):
        damping: float = Field(
            0.1,
            gt=0.0,
            description="xi in omega / (Delta^2 + xi): bounds Omega for weights that barely moved",
        )

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.omega: Tensors = {}
        self.stage_start: Tensors = {}
        self._grad: Tensors = {}
        self._before: Tensors = {}

    def on_stage_start(self, ctx: TrainContext) -> None:
        params = trainable(ctx.model)
        self.omega = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        self.stage_start = {k: p.detach().float().clone() for k, p in params.items()}

    def after_backward(self, ctx: TrainContext) -> None:
        params = trainable(ctx.model)
        own = self.penalty.gradient(params, self.knobs.lam) if self.penalty.terms else {}
        self._grad = {}
        for k, p in params.items():
            if p.grad is not None:
                g = p.grad.detach().float()
                self._grad[k] = g - own[k] if k in own else g.clone()
        self._before = {k: params[k].detach().float().clone() for k in self._grad}

    def after_step(self, ctx: TrainContext) -> None:
        params = trainable(ctx.model)
        for k, g in self._grad.items():
            self.omega[k] -= g * (params[k].detach().float() - self._before[k])
        self._grad, self._before = {}, {}

    def importance(self, ctx: TrainContext) -> Tensors:
        params = trainable(ctx.model)
        return {
            k: path_integral_importance(
                self.omega[k], p.detach().float() - self.stage_start[k], self.knobs.damping
            )
            for k, p in params.items()
        }
