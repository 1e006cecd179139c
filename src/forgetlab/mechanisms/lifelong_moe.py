"""Lifelong-MoE (Chen et al. 2023, "Lifelong Language Pretraining with Distribution-Specialized
Experts"; docs/methods.md) on an MoE model (``model.ffn = "moe"``).

At every stage after the first, each MoE layer gains ``new_experts`` experts, copied from the
existing ones plus small noise with their router rows copied; the old experts and their router rows
are frozen (requires_grad False: no gradient, no weight decay, bit-identical from then on); top-k
stays, so FLOPs per token stay flat. A KL(old || new) term to a frozen copy of the model taken at
stage start keeps the output distribution from drifting:
L = LM + kl_weight * E_x[KL(M_old(x) || M_new(x))] (Chen et al. 2023; per token, mean).

The expert blocks of all stages are allocated at ``setup`` (inactive until their stage), so the
model's layout and the optimizer's parameter groups are fixed from the first step and a run resumed
from any checkpoint continues exactly; the growth is recorded in ``model.moe.added_experts`` so a
saved checkpoint rebuilds the grown model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register
from forgetlab.models import GPT, model_flops_per_token
from forgetlab.models.moe import MoE


@register
class LifelongMoE(Mechanism):
    """Add experts per stage, freeze the old ones and their router rows, distil from the old model."""

    name = "lifelong_moe"
    saved = ("stage", "teacher_weights")

    class Knobs(BaseModel):
        model_config = ConfigDict(extra="forbid")
        new_experts: int = Field(2, ge=1, description="experts added per MoE layer per stage")
        noise_std: float = Field(0.01, ge=0, description="copy noise, relative to the copy's std")
        kl_weight: float = Field(1.0, ge=0, description="lambda of KL(old || new); 0 = off")

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: LifelongMoE.Knobs = knobs
        self.stage = 0
        self.teacher: GPT | None = None
        self.forward_per_token = 0  # FLOPs of the teacher's forward on one token

    def check_run(self, run: RunConfig) -> None:
        m = run.model
        if m.ffn != "moe":
            raise ConfigError(
                f"mechanism 'lifelong_moe' needs an MoE model: model.ffn = {m.ffn!r}; "
                "allowed: 'moe'"
            )
        if m.moe.every_n > m.n_layer:
            raise ConfigError(
                f"mechanism 'lifelong_moe' needs an MoE layer: model.moe.every_n = "
                f"{m.moe.every_n} exceeds model.n_layer = {m.n_layer}; allowed: 1..{m.n_layer}"
            )
        if m.moe.added_experts:
            raise ConfigError(
                f"model.moe.added_experts = {m.moe.added_experts}: lifelong_moe allocates the "
                "expert blocks itself; leave it empty"
            )

    def setup(self, ctx: TrainContext) -> None:
        self.model = ctx.model
        self.layers = [m for m in ctx.model.modules() if isinstance(m, MoE)]
        added = [self.knobs.new_experts] * (len(ctx.stream.domains) - 1)
        moe_cfg = ctx.model.config.moe
        for layer in self.layers:
            like = layer.router[0]
            for size in added:
                layer._append_block(size)
            layer.to(device=like.device, dtype=like.dtype)
        moe_cfg.added_experts = added
        new_params = [p for layer in self.layers for b in range(1, len(added) + 1)
                      for p in layer.block_params(b)]
        if new_params:
            ctx.optimizer.add_param_group(
                {"params": new_params, "weight_decay": ctx.config.train.weight_decay}
            )
        self._freeze(0)
        self.forward_per_token = model_flops_per_token(self.model.config)["forward"]

    def _freeze(self, stage: int) -> None:
        """Only the block of ``stage`` trains; older blocks are frozen, later ones inactive."""
        for layer in self.layers:
            for block in range(len(layer.block_sizes())):
                for p in layer.block_params(block):
                    p.requires_grad_(block == stage)

    def _snapshot(self, weights: dict[str, torch.Tensor]) -> GPT:
        """A frozen model of the current (grown) layout holding ``weights``."""
        with torch.random.fork_rng(devices=[]):  # building must not move the run's RNG
            teacher = GPT(self.model.config)
        teacher.load_state_dict(weights)
        return teacher.to(self.device).eval().requires_grad_(False)

    @property
    def teacher_weights(self) -> dict[str, torch.Tensor] | None:
        """The stage-start model's weights (None in the first stage or with kl_weight = 0)."""
        return None if self.teacher is None else self.teacher.state_dict()

    @teacher_weights.setter
    def teacher_weights(self, weights: dict[str, torch.Tensor] | None) -> None:
        self.teacher = None if weights is None else self._snapshot(weights)

    def on_stage_start(self, ctx: TrainContext) -> None:
        self.stage = ctx.stage
        if ctx.stage == 0:
            return
        self.teacher = self._snapshot(self.model.state_dict()) if self.knobs.kl_weight > 0 else None
        for layer in self.layers:
            layer.activate_block(ctx.stage, self.knobs.noise_std, ctx.generator)
        self._freeze(ctx.stage)

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        with torch.no_grad(), ctx.autocast():
            old = self.teacher(batch.x)
        self.count_flops(self.forward_per_token * batch.n_tokens)
        kl = F.kl_div(
            output.logits.float().log_softmax(-1),
            old.float().log_softmax(-1),
            log_target=True,
            reduction="none",
        ).sum(-1)
        return {"kl": self.knobs.kl_weight * kl.mean()}

    def on_restore(self) -> None:
        self._freeze(self.stage)
