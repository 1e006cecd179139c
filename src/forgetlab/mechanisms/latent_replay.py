"""Latent replay (Pellegrini et al. 2020): rehearse stored activations through the upper layers.

The hidden state after block ``layer`` (1-based: ``layer = 1`` cuts after the first block) is
stored with its next-token targets, and each step of a later stage replays ``replay_rows`` stored
sequences through ``blocks[layer:]``, the final norm and the head, adding ``weight`` times their
mean token cross-entropy to the loss (Pellegrini 2020: store intermediate features instead of
samples). The layers below the cut -- token and position embeddings and ``blocks[:layer]`` -- are
frozen after stage 1, so an activation stored once stays the one the lower stack computes; with
tied embeddings the LM head *is* the token embedding and freezes with it.

Stage-1 rows are written while the lower stack still trains, so they keep their token ids until
the end of stage 1, where their activations are recomputed by the now frozen stack and the ids
are dropped (set to -1): from then on the memory holds activations and targets only. The memory
is a :class:`~forgetlab.mechanisms.parts.buffers.SequenceBuffer` (x = activation (T, C), y = targets and
ids (2, T)) under any of its stream policies; herding needs features of raw samples, so it is not
offered.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register
from forgetlab.mechanisms.parts.buffers import SequenceBuffer, check_capacity, stream_rows


class _Capture:
    """Forward hook on the cut block: keeps the output of the next forward once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.value: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        if self.armed:
            self.value, self.armed = out.detach(), False


def upper_logits(model: Any, h: torch.Tensor, layer: int) -> torch.Tensor:
    """Hidden state after block ``layer`` -> logits, through ``blocks[layer:]``, ln_f and head."""
    for block in model.blocks[layer:]:
        h = block(h)
    return model.logits_from_hidden(model.ln_f(h))


def lower_hidden(model: Any, idx: torch.Tensor, layer: int) -> torch.Tensor:
    """Token ids -> hidden state after block ``layer`` (as in ``GPT.hidden``, cut short)."""
    h = model.drop(model.positions(model.wte(idx), 0))
    for block in model.blocks[:layer]:
        h = block(h)
    return h


@register
class LatentReplay(Mechanism):
    """Store activations at a cut layer, replay them through the layers above, freeze below."""

    name = "latent_replay"
    incompatible = frozenset({"lora", "packnet"})
    incompatible_reason = (
        "stored activations are valid only for a fixed lower stack: lora routes each domain "
        "through its own lower adapters, and packnet re-initialises and masks the lower weights"
    )

    class Knobs(Mechanism.Knobs):
        layer: int = Field(1, ge=1, description="cut after this block (1-based)")
        capacity: int = Field(256, ge=1, description="memory size in sequences")
        policy: Literal["reservoir", "ring", "balanced", "loss"] = "reservoir"
        replay_rows: int = Field(4, ge=1, description="stored sequences replayed per step")
        weight: float = Field(1.0, gt=0.0, description="weight of the replayed loss term")

    saved = ("buffer", "frozen")

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: LatentReplay.Knobs = knobs
        self.buffer = SequenceBuffer(knobs.capacity, knobs.policy)
        self.capture = _Capture()
        self.upper_per_token = 0.0  # training FLOPs of one token through the upper stack
        self.lower_per_token = 0.0  # forward FLOPs of one token through the lower stack
        self.model: Any = None
        self.frozen = False

    def check_run(self, run: RunConfig) -> None:
        k, n_layer = self.knobs, run.model.n_layer
        if k.layer >= n_layer:
            raise ConfigError(
                f"mechanism 'latent_replay': layer = {k.layer} leaves no block above the cut "
                f"of model.n_layer = {n_layer}; allowed: 1..{n_layer - 1}"
            )
        check_capacity(k.capacity, k.policy, run, self.name)

    def setup(self, ctx: TrainContext) -> None:
        model, k = ctx.model, self.knobs
        n_layer = len(model.blocks)
        model.blocks[k.layer - 1].register_forward_hook(self.capture)
        cfg = model.config
        blocks_above = sum(p.numel() for b in model.blocks[k.layer :] for p in b.parameters())
        blocks_below = sum(p.numel() for b in model.blocks[: k.layer] for p in b.parameters())
        attn = cfg.n_embd * cfg.block_size  # H * Q * T per layer (nanoGPT's 12 L H Q T term)
        head = model.lm_head.weight.numel()
        self.upper_per_token = float(6 * (blocks_above + head) + 12 * (n_layer - k.layer) * attn)
        self.lower_per_token = float(2 * blocks_below + 4 * k.layer * attn)
        self.model = model

    def lower_parameters(self) -> list[torch.nn.Parameter]:
        m = self.model
        mods = [m.wte, m.positions, *m.blocks[: self.knobs.layer]]
        return [p for mod in mods for p in mod.parameters()]

    def _freeze(self) -> None:
        self.frozen = True
        for p in self.lower_parameters():
            p.requires_grad_(False)  # AdamW skips parameters without a gradient
            p.grad = None

    # -------------------------------------------------------------------------------- hooks
    def on_stage_start(self, ctx: TrainContext) -> None:
        if ctx.stage > 0:
            self._freeze()

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        self.capture.armed = True  # the trainer's forward on this batch comes next
        return batch

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        act, self.capture.value = self.capture.value, None
        if act is None:  # not a stream batch (another mechanism's extra step)
            return {}
        keep = stream_rows(batch.weights, batch.replayed, batch.x.shape[0]).to(batch.x.device)
        if keep.any():
            ids = batch.x if ctx.stage == 0 else torch.full_like(batch.x, -1)
            y = torch.stack([batch.y, ids], 1)[keep]
            scores = output.token_loss.detach().float().mean(1)[keep].cpu()
            self.buffer.add(act.float()[keep], y, batch.domain, ctx.generator, scores)
        ctx.log["latent_replay/size"] = float(len(self.buffer))
        if ctx.stage == 0 or len(self.buffer) == 0:
            return {}
        h, y, _ = self.buffer.sample(self.knobs.replay_rows, ctx.generator)
        with ctx.autocast():
            logits = upper_logits(ctx.model, h.to(self.device), self.knobs.layer)
        targets = y[:, 0].to(self.device)
        self.count_flops(self.upper_per_token * targets.numel())
        replay = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return {"replay": self.knobs.weight * replay}

    @torch.no_grad()
    def on_stage_end(self, ctx: TrainContext) -> None:
        if ctx.stage != 0:
            return
        self._freeze()
        slots = (self.buffer.domain >= 0).nonzero().flatten()
        if len(slots) == 0 or self.buffer.x is None or self.buffer.y is None:
            return
        model, was_training = ctx.model, ctx.model.training
        model.eval()
        try:
            for chunk in slots.split(64):
                ids = self.buffer.y[chunk, 1].to(self.device)
                with ctx.autocast():
                    h = lower_hidden(model, ids, self.knobs.layer)
                self.buffer.x[chunk] = h.float().to(self.buffer.x.device)
                self.buffer.y[chunk, 1] = -1
                self.count_flops(self.lower_per_token * ids.numel())
        finally:
            model.train(was_training)

    def stored_bytes(self) -> int:
        """Bytes the held rows take: activation (T x C float32) + targets and ids (2 x T int64)."""
        if self.buffer.x is None or self.buffer.y is None:
            return 0
        row = self.buffer.x[0].nbytes + self.buffer.y[0].nbytes
        return len(self.buffer) * row

    def on_restore(self) -> None:
        if self.frozen:  # resumed inside a later stage: on_stage_start is not called again
            self._freeze()
