"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017) and A-GEM (Chaudhry et al. 2019).

Both keep a small episodic memory of training windows per finished domain and, at every step,
change the gradient g so that, to first order, the update does not increase the loss on the
memories (Lopez-Paz & Ranzato 2017, sec. 3).

GEM: with G the matrix of the memories' gradients (one row per past domain), project g onto
{g' : G g' >= 0} by solving the dual of min 1/2 ||g' - g||^2 (Lopez-Paz eq. 10-11):
min_v 1/2 v^T G G^T v + g^T G^T v, v >= margin; then g' = G^T v + g. The QP has one variable per
past domain and is solved exactly with ``quadprog`` (Goldfarb-Idnani, as in the GEM authors' code).

A-GEM: one constraint with g_ref the gradient on a batch drawn from the union of the memories:
g' = g - (g^T g_ref / g_ref^T g_ref) g_ref when g^T g_ref < 0, else g (Chaudhry eq. 11).

Projection happens in ``after_backward``, before clipping, on all trainable parameters as one
vector; the memories' gradients are extra forward and backward passes and are counted as such.
"""

from __future__ import annotations

import abc

import numpy as np
import quadprog
import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.mechanisms.base import Mechanism, TrainContext, register
from forgetlab.mechanisms.parts.importance import draw_windows, flops_per_token


def gem_project(g: torch.Tensor, G: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The GEM-projected gradient: argmin ||g' - g||^2 s.t. G g' >= 0 (Lopez-Paz eq. 10-11)."""
    if bool((G @ g >= 0).all()) and margin == 0.0:
        return g
    Gd = G.double().cpu().numpy()
    gd = g.double().cpu().numpy()
    gram = Gd @ Gd.T
    gram = 0.5 * (gram + gram.T)
    t = G.shape[0]
    try:
        v = quadprog.solve_qp(gram, -(Gd @ gd), np.eye(t), np.full(t, margin))[0]
    except ValueError:  # memory gradients linearly dependent: the Gram is only semi-definite
        ridge = np.eye(t) * 1e-10 * max(np.trace(gram), 1e-30)
        v = quadprog.solve_qp(gram + ridge, -(Gd @ gd), np.eye(t), np.full(t, margin))[0]
    return torch.as_tensor(Gd.T @ v + gd, dtype=g.dtype, device=g.device)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM: remove g's component against g_ref when they conflict (Chaudhry 2019, eq. 11)."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref) * g_ref


class EpisodicProjection(Mechanism, abc.ABC):
    """The per-domain memories and the gradient plumbing GEM and A-GEM share."""

    class Knobs(Mechanism.Knobs):
        memory_per_domain: int = Field(16, ge=1, description="windows kept from each domain")

    saved = ("memory",)

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.memory: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.train_per_token = 0  # forward + backward FLOPs of one memory token

    def setup(self, ctx: TrainContext) -> None:
        self.train_per_token = int(flops_per_token(ctx, "train"))

    @abc.abstractmethod
    def project(self, ctx: TrainContext, g: torch.Tensor) -> torch.Tensor:
        """The flat gradient ``g`` projected against the memories' constraints."""

    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage < len(ctx.stream.domains) - 1:
            self.memory.append(draw_windows(ctx, ctx.stage, self.knobs.memory_per_domain))

    def after_backward(self, ctx: TrainContext) -> None:
        if not self.memory:
            return
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        g = torch.cat([_flat_grad(p) for p in params])
        projected = self.project(ctx, g)
        ctx.log[f"{self.name}/projected"] = float(projected is not g)
        if projected is not g:
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = projected[offset : offset + n].view_as(p).to(p.dtype)
                offset += n

    def memory_gradient(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the token-mean cross-entropy on (x, y), flat, leaving ``.grad`` alone."""
        x, y = x.to(ctx.device), y.to(ctx.device)
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        with ctx.autocast():
            logits = ctx.model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.count_flops(self.train_per_token * y.numel())
        return torch.cat(
            [
                (torch.zeros_like(p) if gr is None else gr).flatten().float()
                for p, gr in zip(params, grads, strict=True)
            ]
        )


def _flat_grad(p: torch.Tensor) -> torch.Tensor:
    return (torch.zeros_like(p) if p.grad is None else p.grad).flatten().float()


@register
class GEM(EpisodicProjection):
    """GEM: one constraint per past domain, exact QP projection."""

    name = "gem"
    incompatible = frozenset({"agem"})
    incompatible_reason = "A-GEM approximates GEM's constraints: projecting with both is redundant"

    class Knobs(EpisodicProjection.Knobs):
        margin: float = Field(
            0.0, ge=0.0, description="lower bound on the dual variables (GEM's memory strength)"
        )

    def project(self, ctx: TrainContext, g: torch.Tensor) -> torch.Tensor:
        G = torch.stack([self.memory_gradient(ctx, x, y) for x, y in self.memory])
        return gem_project(g, G, self.knobs.margin)


@register
class AGEM(EpisodicProjection):
    """A-GEM: one averaged constraint from a random batch of all memories."""

    name = "agem"
    incompatible = frozenset({"gem"})
    incompatible_reason = "A-GEM approximates GEM's constraints: projecting with both is redundant"

    class Knobs(EpisodicProjection.Knobs):
        reference_batch: int = Field(
            16, ge=1, description="memory windows drawn per step for the reference gradient"
        )

    def project(self, ctx: TrainContext, g: torch.Tensor) -> torch.Tensor:
        xs = torch.cat([x for x, _ in self.memory])
        ys = torch.cat([y for _, y in self.memory])
        gen = ctx.generator
        order = torch.randperm(xs.shape[0], generator=gen, device=gen.device)
        idx = order[: self.knobs.reference_batch].to(xs.device)  # without replacement
        return agem_project(g, self.memory_gradient(ctx, xs[idx], ys[idx]))
