"""PackNet (Mallya & Lazebnik 2018): one network, one pruned sub-network per domain.

After training domain t, each weight matrix keeps the ``keep`` fraction of its still-free weights
with the largest magnitude (per-layer threshold, M = 1{|W| >= tau}); those become
domain t's and are frozen; the other free weights are zeroed (pruned), optionally the kept ones are
re-trained for ``retrain_steps`` with the pruned ones held at zero (the paper's post-pruning
fine-tuning), and at the next domain's start the free weights are re-initialised and trained.
Domain j is evaluated with the weights of domains 1..j only (task-ID inference, as the paper).

Which parameters: every matrix (``dim >= 2``: linear layers, token and position embeddings, the
tied LM head) is packed element by element. Vectors (biases, LayerNorm gains and shifts) are
shared by all domains, so, like the paper's biases and batch-norm statistics, they are trained on
the first domain only and frozen after it.

Exactness: masking the gradient is not enough, because AdamW's momentum and decoupled weight
decay move weights whose gradient is zero. Every position that must not change therefore has its
value re-written from a snapshot after each optimizer step (its gradient is also zeroed before
clipping, so it does not count in the clipping norm). Old domains' outputs are bit-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from pydantic import Field

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, TrainContext, register
from forgetlab.mechanisms.parts.importance import draw_windows, trainable

FREE = 0  # owner value of a weight no domain has kept yet


@register
class PackNet(Mechanism):
    """Iterative magnitude pruning into per-domain sub-networks, old sub-networks frozen exactly."""

    name = "packnet"
    saved = ("owner", "init_std")
    incompatible = frozenset({"lora", "ewc", "online_ewc", "si", "mas"})
    incompatible_reason = (
        "PackNet freezes each domain's weights exactly: LoRA would adapt those frozen matrices and "
        "change old domains' outputs, and a quadratic penalty (ewc, online_ewc, si, mas) would "
        "only pull the freed weights back towards their pruned zeros"
    )

    class Knobs(Mechanism.Knobs):
        keep: float = Field(
            0.5, gt=0.0, le=1.0, description="share of each layer's free weights a domain keeps"
        )
        retrain_steps: int = Field(
            0, ge=0, description="optimizer steps re-training the kept weights after pruning"
        )

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.owner: dict[str, torch.Tensor] = {}  # per matrix: 0 = free, t = domain t's
        self.init_std: dict[str, float] = {}
        self.snapshot: dict[str, torch.Tensor] | None = None  # values frozen positions must hold
        self.retraining = False

    def check_run(self, run: RunConfig) -> None:
        if len(run.data.domains) > 255:  # owners are stored as uint8
            raise ConfigError(
                f"mechanism 'packnet' keeps at most 255 domains; data.domains has "
                f"{len(run.data.domains)}"
            )

    def setup(self, ctx: TrainContext) -> None:
        for name, p in trainable(ctx.model).items():
            if p.dim() >= 2:
                self.owner[name] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                self.init_std[name] = float(p.detach().float().std())

    # ----------------------------------------------------------------------- which positions
    def _trainable(self, ctx: TrainContext, name: str) -> torch.Tensor:
        """Positions that may learn now (a 0-d flag for a shared vector, else a mask)."""
        if name not in self.owner:  # shared vectors: first domain only
            return torch.tensor(ctx.stage == 0, device=ctx.device)
        owner = self.owner[name]
        return owner == (ctx.stage + 1 if self.retraining else FREE)

    # ----------------------------------------------------------------------------- hooks
    def on_stage_start(self, ctx: TrainContext) -> None:
        if ctx.stage == 0:
            return
        gen = ctx.generator
        params = trainable(ctx.model)
        with torch.no_grad():
            for name, owner in self.owner.items():
                p = params[name]
                fresh = torch.randn(p.shape, generator=gen, device=gen.device).to(p.device, p.dtype)
                p.copy_(torch.where(owner == FREE, fresh * self.init_std[name], p))
        self.snapshot = {n: p.detach().clone() for n, p in params.items()}

    def after_backward(self, ctx: TrainContext) -> None:
        if ctx.stage == 0 and not self.retraining:
            return
        params = trainable(ctx.model)
        if self.snapshot is None:  # resumed mid-stage: frozen positions hold their values
            self.snapshot = {n: p.detach().clone() for n, p in params.items()}
        for name, p in params.items():
            if p.grad is not None:
                p.grad.mul_(self._trainable(ctx, name))

    def after_step(self, ctx: TrainContext) -> None:
        if ctx.stage == 0 and not self.retraining:
            return
        assert self.snapshot is not None, "after_backward takes the snapshot"
        with torch.no_grad():
            for name, p in trainable(ctx.model).items():
                p.copy_(torch.where(self._trainable(ctx, name), p, self.snapshot[name]))

    def on_stage_end(self, ctx: TrainContext) -> None:
        params = trainable(ctx.model)
        domain = ctx.stage + 1
        with torch.no_grad():
            for name, owner in self.owner.items():
                p = params[name]
                free = owner == FREE
                n_keep = round(self.knobs.keep * int(free.sum()))
                score = torch.where(free, p.detach().abs().float(), torch.full_like(p, -1.0))
                kept = torch.topk(score.flatten(), n_keep).indices
                owner.view(-1)[kept] = domain
                p.masked_fill_(owner == FREE, 0.0)
        if self.knobs.retrain_steps:
            self._retrain(ctx)
        self.snapshot = None

    def _retrain(self, ctx: TrainContext) -> None:
        if ctx.extra_step is None:
            raise RuntimeError("packnet retrain_steps > 0 needs a trainer that supplies extra_step")
        batch_size = ctx.config.train.batch_size
        self.snapshot = {n: p.detach().clone() for n, p in trainable(ctx.model).items()}
        self.retraining = True
        try:
            for _ in range(self.knobs.retrain_steps):
                x, y = draw_windows(ctx, ctx.stage, batch_size)
                ctx.extra_step(Batch(x, y, None, ctx.stage))
        finally:
            self.retraining = False

    @contextlib.contextmanager
    def eval_scope(self, ctx: TrainContext, domain_index: int) -> Iterator[None]:
        """Evaluate domain j (0-based) with the weights of domains 1..j+1; the free weights too
        when j is the domain in training or a later one (they are zero once pruned)."""
        params = trainable(ctx.model)
        current = domain_index >= ctx.stage
        inactive = {}
        for name, owner in self.owner.items():
            active = (owner >= 1) & (owner <= domain_index + 1)
            if current:
                active |= owner == FREE
            if not bool(active.all()):
                inactive[name] = ~active
        saved = {n: params[n].detach().clone() for n in inactive}
        try:
            with torch.no_grad():
                for name, mask in inactive.items():
                    params[name].masked_fill_(mask, 0.0)
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
