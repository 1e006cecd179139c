"""The quadratic penalty shared by EWC, online EWC, SI and MAS, and the mechanism base they share.

All four methods add (lambda / 2) * sum_i Omega_i (theta_i - theta*_i)^2 to the loss
(Kirkpatrick et al. 2017, eq. 3) and differ only in the importance Omega
and in how a finished domain's importance joins the old ones:

* ``append``: one term per finished domain, each with its own anchor (Kirkpatrick 2017, eq. 3
  summed over tasks, as EWC's multi-task form);
* ``fold``: a single term, Omega <- gamma * Omega + Omega_new and theta* <- the newest parameters
  (Schwarz et al. 2018, online EWC; SI, Zenke 2017 eq. 5 and MAS, Aljundi 2018 sec. 4
  accumulate with gamma = 1).

Zenke's surrogate c * sum Omega (theta - theta~)^2 is this penalty with lambda = 2c.
"""

from __future__ import annotations

import abc

import torch
from pydantic import Field

from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext
from forgetlab.mechanisms.parts.importance import trainable

Tensors = dict[str, torch.Tensor]


class QuadraticPenalty:
    """Terms (Omega_k, theta*_k); value = (lambda / 2) * sum_k sum_i Omega_k,i (theta_i - theta*_k,i)^2."""

    def __init__(self) -> None:
        self.terms: list[tuple[Tensors, Tensors]] = []

    def append(self, importance: Tensors, anchor: Tensors) -> None:
        self.terms.append((_detached(importance), _detached(anchor)))

    def fold(self, importance: Tensors, anchor: Tensors, decay: float) -> None:
        if not self.terms:
            self.append(importance, anchor)
            return
        old, _ = self.terms[0]
        merged = {k: decay * old[k] + importance[k].detach().float() for k in importance}
        self.terms = [(merged, _detached(anchor))]

    def value(self, params: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(params.values())).device)
        for omega, anchor in self.terms:
            for k, w in omega.items():
                total = total + (w * (params[k].float() - anchor[k]).square()).sum()
        return 0.5 * lam * total

    def gradient(self, params: dict[str, torch.Tensor], lam: float) -> Tensors:
        """d value / d theta = lambda * sum_k Omega_k (theta - theta*_k), without autograd."""
        out = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        for omega, anchor in self.terms:
            for k, w in omega.items():
                out[k] += lam * w * (params[k].detach().float() - anchor[k])
        return out

    def state_dict(self) -> list[dict[str, Tensors]]:
        return [{"importance": omega, "anchor": anchor} for omega, anchor in self.terms]

    def load_state_dict(
        self, state: list[dict[str, Tensors]], device: torch.device | str = "cpu"
    ) -> None:
        self.terms = [
            ({k: v.to(device) for k, v in t["importance"].items()},
             {k: v.to(device) for k, v in t["anchor"].items()})
            for t in state
        ]


def _detached(t: Tensors) -> Tensors:
    return {k: v.detach().float().clone() for k, v in t.items()}


class ImportancePenalty(Mechanism, abc.ABC):
    """Base of EWC / online EWC / SI / MAS: adds the penalty, consolidates at every stage end.

    A subclass defines ``importance(ctx)`` for the domain just finished, and ``decay`` (None =
    one term per domain, a float = fold into one term with that decay). The last domain's
    importance is never used, so it is not computed.
    """

    class Knobs(Mechanism.Knobs):
        lam: float = Field(
            ge=0.0,
            description="penalty strength lambda; required: its scale depends on the model, the "
            "data and the importance measure, so no default is right for all of them",
        )

    decay: float | None = 1.0
    saved = ("penalty",)

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.penalty = QuadraticPenalty()

    @abc.abstractmethod
    def importance(self, ctx: TrainContext) -> Tensors:
        """Per-parameter importance of the domain just finished."""

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if not self.penalty.terms:
            return {}
        return {"penalty": self.penalty.value(trainable(ctx.model), self.knobs.lam)}

    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage == len(ctx.stream.domains) - 1:
            return
        omega = self.importance(ctx)
        anchor = {k: p.detach() for k, p in trainable(ctx.model).items()}
        if self.decay is None:
            self.penalty.append(omega, anchor)
        else:
            self.penalty.fold(omega, anchor, self.decay)
