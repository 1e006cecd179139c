"""The training step: the one place where one optimizer step of a run is defined.

A stream step draws this rank's micro-batches of the stage's source, lets the mechanisms rewrite
them (replayed rows, selective write's scoring forward), runs the forward with the model's own
auxiliary terms and the mechanisms' losses, the backward (accumulated over ``train.grad_accum``
micro-batches; under DDP only the last one synchronises), the mechanisms' gradient hooks,
clipping, the optimizer and the weight hooks. A mechanism's extra step (a sleep phase, PackNet's
retraining) goes through the same forward and optimizer step, so penalties, masks and projections
hold there too. A non-finite loss or gradient norm stops the run here, as a
:class:`~forgetlab.train.failures.DivergenceError` that names where it happened.

The :class:`~forgetlab.train.trainer.Trainer` owns one :class:`StepRunner` and decides when to
step; the runner charges each phase's time, the FLOPs and the new-data tokens to the run's state.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from forgetlab.data import DomainMixture
from forgetlab.mechanisms import Batch, Mechanism, StepOutput, TrainContext
from forgetlab.models import GPT
from forgetlab.train.distributed import DataParallel, DistInfo
from forgetlab.train.failures import DivergenceError
from forgetlab.train.optim import trains_on_tokens, weighted_token_mean
from forgetlab.train.rundir import RunDir
from forgetlab.train.state import RunState


@dataclass(eq=False)
class StepRunner:
    """Optimizer steps of one run: :meth:`train_step` on the stream, :meth:`extra_step` on a
    batch a mechanism supplies (the trainer hands it to the mechanisms as ``ctx.extra_step``)."""

    model: GPT
    mechanisms: list[Mechanism]
    ctx: TrainContext  # the run's config, optimizer, device, autocast and position
    state: RunState  # the data generator, FLOP and time accounts, new-data counts
    sources: list[DomainMixture]  # what each stage trains on
    dist: DistInfo
    run_dir: RunDir  # names the last finite checkpoint when the run diverges
    ddp: DataParallel = field(init=False)
    train_model: torch.nn.Module = field(init=False)  # what the forward calls (see wrap)

    def __post_init__(self) -> None:
        compiled = torch.compile(self.model) if self.ctx.config.train.compile else self.model
        self.ddp = DataParallel(self.dist, self.ctx.device, compiled)
        self.wrap()

    def wrap(self) -> None:
        """Train through the compiled model, in DDP under torchrun over the parameters that train
        now: called again whenever mechanisms may have frozen weights (or a resume restored)."""
        self.train_model = self.ddp.wrap(self.model)

    # ------------------------------------------------------------------------- the pieces
    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on ``batch`` (token-weighted cross-entropy, the model's terms,
        the mechanisms' penalties) and each term's value by name."""
        with self.ctx.autocast():
            logits = self.train_model(batch.x)
        token_loss = F.cross_entropy(
            logits.float().flatten(0, 1), batch.y.flatten(), reduction="none"
        ).view_as(batch.y)
        loss = weighted_token_mean(token_loss, batch.weights)
        output = StepOutput(logits=logits, token_loss=token_loss)
        terms: dict[str, float] = dict(self.model.stats())
        for name, value in self.model.aux_losses().items():
            loss = loss + value  # the model's own terms, e.g. MoE balance and z-loss
            terms[name] = float(value.detach())
        for m in self.mechanisms:
            for name, value in m.loss(self.ctx, batch, output).items():
                loss = loss + value
                terms[f"{m.name}/{name}"] = float(value.detach())
        return loss, terms

    def optimizer_step(self, stage: int, t0: float) -> tuple[float, float]:
        """Gradient hooks, clipping, the optimizer and weight hooks, then the mechanisms' step
        hooks; the gradient norm and the time now."""
        cfg, timer, optimizer = self.ctx.config.train, self.state.timing, self.ctx.optimizer
        for m in self.mechanisms:
            m.after_backward(self.ctx)
        t0 = timer.add(stage, "backward", t0)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:  # still measured: a non-finite gradient stops the run (no host sync here)
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step()  # e.g. re-apply sparsity masks
        t0 = timer.add(stage, "optimizer", t0)  # synchronises: reading the norm is free now
        grad_norm = float(norm)
        if not math.isfinite(grad_norm):
            raise self.diverged("the gradient norm", grad_norm)
        for m in self.mechanisms:
            m.after_step(self.ctx)  # may run a whole sleep phase of extra steps
        t0 = timer.add(stage, "mechanisms", t0)
        return grad_norm, t0

    def draw_batch(self, stage: int) -> Batch:
        """This rank's micro-batch of the stage's source (its domain, or joint training's mixture
        of all): every rank draws the global batch from the same generator and keeps its slice;
        the new-data tokens of each domain are counted on the global batch."""
        cfg, world, rank = self.ctx.config.train, self.dist.world_size, self.dist.rank
        source, block = self.sources[stage], self.model.config.block_size
        x, y, of_domain = source.sample(self.state.rng.data, cfg.batch_size * world, block)
        counts = np.bincount(of_domain, minlength=len(source.names))
        for d, n in zip(source.names, counts, strict=True):
            self.state.new_data_per_domain[d] += int(n) * block
        if world > 1:
            rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
            x, y = x[rows], y[rows]
        return Batch(x.to(self.ctx.device), y.to(self.ctx.device), None, stage)

    # --------------------------------------------------------------------------- the steps
    def train_step(self, stage: int) -> dict[str, float]:
        """One optimizer step on ``stage``'s source: its training loss, gradient norm, tokens
        (all ranks) and the loss terms, averaged over the micro-batches."""
        accum, timer = self.ctx.config.train.grad_accum, self.state.timing
        total, tokens = 0.0, 0
        logged: list[float] = []  # losses of the micro-batches that trained on some token
        terms: dict[str, float] = {}
        t0 = time.perf_counter()
        for micro in range(accum):
            batch = self.draw_batch(stage)
            t0 = timer.add(stage, "data", t0)
            if self.mechanisms:  # replayed rows, selective write's scoring forward...
                for m in self.mechanisms:
                    batch = m.make_batch(self.ctx, batch)
                t0 = timer.add(stage, "mechanisms", t0)  # (each add syncs CUDA: only if any)
            with self._grad_sync(micro == accum - 1):
                loss, micro_terms = self.forward_loss(batch)
                t0 = timer.add(stage, "forward", t0)
                (loss / accum).backward()
            t0 = timer.add(stage, "backward", t0)
            total += float(loss.detach()) / accum
            if trains_on_tokens(batch):
                logged.append(float(loss.detach()))
            tokens += batch.n_tokens * self.dist.world_size
            for k, v in micro_terms.items():
                terms[k] = terms.get(k, 0.0) + v / accum
        if not math.isfinite(total):  # the loss is on the host already: checked every step
            raise self.diverged("the training loss", total)
        grad_norm, _ = self.optimizer_step(stage, t0)
        self.state.flops.add_train(stage, tokens)
        # a step whose gate wrote no token has no training loss (NaN, not the 0 of sum(w*l)/sum(w))
        train_loss = sum(logged) / len(logged) if logged else math.nan
        return {"train_loss": train_loss, "grad_norm": grad_norm, "tokens": tokens, **terms}

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager[object]:
        """Under DDP, gradients are all-reduced on the last micro-batch of a step only."""
        ddp = isinstance(self.train_model, DistributedDataParallel)
        if last or not self.dist.enabled or not ddp:
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def extra_step(self, batch: Batch) -> float:
        """One optimizer step on a batch a mechanism supplies (e.g. a sleep phase on the buffer).

        Its forward/backward FLOPs are counted as mechanism compute; gradient and weight hooks run
        as in a normal step, so masks and projections hold during extra steps too.
        """
        stage, timer = self.ctx.stage, self.state.timing
        timer.paused = True  # the calling hook's time covers it (phase "mechanisms")
        try:
            loss, _ = self.forward_loss(batch)
            loss.backward()
            self.optimizer_step(stage, time.perf_counter())  # checks the gradient norm
        finally:
            timer.paused = False
        self.state.flops.add_extra(stage, batch.n_tokens)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self.diverged("a mechanism's extra-step loss", value)
        return value

    # --------------------------------------------------------------------------- divergence
    def diverged(self, what: str, value: float | str, after: bool = False) -> DivergenceError:
        """The error for a non-finite ``what`` now (``after``: after the last step done), naming
        the run's position, its last finite checkpoint and learning rate."""
        latest = self.run_dir.latest
        ctx = self.ctx
        return DivergenceError.in_run(
            what, value, done=ctx.global_step, stage=ctx.stage, domain=ctx.domain,
            step=ctx.step, checkpoint=latest.resolve() if latest.exists() else None,
            lr=ctx.optimizer.param_groups[0]["lr"], after=after,
        )
