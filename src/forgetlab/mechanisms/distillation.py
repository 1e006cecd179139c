"""Distillation to the model as it was when the domain began: LwF and KL-to-old.

Learning without Forgetting (Li & Hoiem 2017) keeps the outputs on *new* data close to those of
the frozen pre-domain model, so no old data is stored. Per token, with temperature T
(Hinton et al. 2015, sec. 2: the T^2 factor keeps the soft-target gradients on the scale of the
hard-target ones when T changes), averaged over the valid tokens m[b, t] (docs/methods.md):

    L_distill = T^2 / N_eff * sum_{b,t} m[b,t] * KL(p_tea^T(b,t) || p_stu^T(b,t))

(``form = "ce"`` uses the soft cross-entropy -sum_i p_tea,i log p_stu,i instead: the same
gradient, it differs by the teacher's entropy, a constant). A token is valid when its loss weight
(``Batch.weights``, e.g. from selective write) is positive; without weights every token is.

``lwf`` trains on alpha * L_distill + (1 - alpha) * L_sup (Li & Hoiem 2017's
lambda_o L_old + L_new times 1 - alpha, with lambda_o = alpha / (1 - alpha)). The trainer already
adds L_sup, the weighted token mean of the cross-entropy, so the hook returns
alpha * L_distill - alpha * L_sup, recomputed from the same per-token losses: the sum is exact.
(Scaling ``Batch.weights`` by 1 - alpha would do nothing, because the trainer normalises by the
sum of the weights.) ``kl_to_old`` is Lifelong-MoE's stabiliser (Chen et al. 2023):
L_sup + lambda * KL(old || new), at T = 1 by default. Both start at the second domain: before
it the teacher would be the random initialisation.
"""

from __future__ import annotations

import abc
import copy
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register
from forgetlab.mechanisms.parts.importance import flops_per_token


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    form: Literal["kl", "ce"] = "kl",
) -> torch.Tensor:
    """T^2 times the mean over valid positions of KL(p_tea^T || p_stu^T) (or soft CE), summed
    over the class dimension. Logits are (..., V); ``mask`` has the leading shape."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 -> fp32, fp64 stays
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if form == "kl":
        per_position = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    else:
        per_position = -(log_t.exp() * log_s).sum(-1)
    if mask is None:
        mean = per_position.mean()
    else:
        m = mask.to(per_position.dtype)
        mean = (per_position * m).sum() / m.sum().clamp_min(1.0)
    return temperature**2 * mean


class Distillation(Mechanism, abc.ABC):
    """The teacher (the model at stage start), its forward on each batch and the distillation
    term; subclasses only say how the term and the supervised loss are weighted."""

    class Knobs(Mechanism.Knobs):
        temperature: float = Field(1.0, gt=0.0, description="softmax temperature T")
        form: Literal["kl", "ce"] = Field("kl", description="KL divergence or soft cross-entropy")

    saved = ("teacher_weights",)

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.teacher: torch.nn.Module | None = None
        self._teacher_state: dict[str, torch.Tensor] | None = None  # restored, not yet rebuilt
        self.forward_per_token = 0  # FLOPs of the teacher's forward on one token

    @property
    def teacher_weights(self) -> dict[str, torch.Tensor] | None:
        """The teacher's weights, what a resume rebuilds it from (None before the second domain)."""
        return self.teacher.state_dict() if self.teacher is not None else self._teacher_state

    @teacher_weights.setter
    def teacher_weights(self, weights: dict[str, torch.Tensor] | None) -> None:
        self.teacher, self._teacher_state = None, weights  # rebuilt from the model on first use

    def setup(self, ctx: TrainContext) -> None:
        self.forward_per_token = int(flops_per_token(ctx, "forward"))

    @abc.abstractmethod
    def weigh(self, distill: torch.Tensor, supervised: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms from the distillation and supervised token losses."""

    def on_stage_start(self, ctx: TrainContext) -> None:
        self.teacher = self._frozen_copy(ctx) if ctx.stage > 0 else None
        self._teacher_state = None

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.teacher is None and self._teacher_state is not None:  # resumed mid-stage
            self.teacher = self._frozen_copy(ctx)
            self.teacher.load_state_dict(self._teacher_state)
            self._teacher_state = None
        if self.teacher is None:
            return {}
        with torch.no_grad(), ctx.autocast():
            teacher_logits = self.teacher(batch.x)
        self.count_flops(self.forward_per_token * batch.n_tokens)
        mask = None if batch.weights is None else batch.weights > 0
        distill = distillation_loss(
            output.logits, teacher_logits, self.knobs.temperature, mask, self.knobs.form
        )
        # the trainer's supervised term: weighted token mean of the per-token cross-entropy
        w = batch.weights
        supervised = (
            output.token_loss.mean()
            if w is None
            else (output.token_loss * w).sum() / w.sum().clamp_min(1e-8)
        )
        return self.weigh(distill, supervised)

    @staticmethod
    def _frozen_copy(ctx: TrainContext) -> torch.nn.Module:
        teacher = copy.deepcopy(ctx.model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
            p.grad = None
        return teacher


@register
class LwF(Distillation):
    """Learning without Forgetting: alpha * distillation + (1 - alpha) * supervised."""

    name = "lwf"
    incompatible = frozenset({"kl_to_old"})
    incompatible_reason = "lwf and kl_to_old distil to the same pre-domain model: choose one"

    class Knobs(Distillation.Knobs):
        alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the distillation term")
        temperature: float = Field(2.0, gt=0.0, description="softmax temperature T")

    def weigh(self, distill: torch.Tensor, supervised: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.knobs.alpha
        return {"distill": a * distill, "supervised_share": -a * supervised}


@register
class KLToOld(Distillation):
    """KL to the pre-domain model added to the full supervised loss (Lifelong-MoE)."""

    name = "kl_to_old"
    incompatible = frozenset({"lwf"})
    incompatible_reason = "lwf and kl_to_old distil to the same pre-domain model: choose one"

    class Knobs(Distillation.Knobs):
        lam: float = Field(1.0, ge=0.0, description="weight lambda of the KL term")

    def weigh(self, distill: torch.Tensor, supervised: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"kl": self.knobs.lam * distill}
