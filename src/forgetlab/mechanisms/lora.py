"""LoRA per domain (Hu et al. 2021): a frozen base, one low-rank adapter set per domain.

Each targeted ``nn.Linear`` W gets, per domain d, an update dW_d = (alpha / r) B_d A_d with
A_d (r x in) drawn like a Linear's weight (Kaiming-uniform, bound 1/sqrt(in)) and B_d (out x r)
zero, so an adapter starts as the identity update (Hu 2021, sec. 4.1). Only domain s's adapter
trains in stage s; every base weight and older adapter is frozen (one LoRA per domain: almost
zero forgetting by construction). Domain j is evaluated with adapter j (task-ID routing); a
domain not trained yet uses the newest adapter, i.e. the model as it stands, so R's upper
triangle is forward transfer as for every other mechanism. With ``merge`` evaluation folds the
adapter into the weights (W + dW, restored bit for bit afterwards), as deployed LoRA does.

LoRA adapts a base that already knows language. From a random initialisation a frozen base leaves
rank-r adapters little to work with (on the tiny preset: plasticity 0.32 nats against naive
fine-tuning's 2.59). ``base_stages = n`` makes the first n stages ordinary full fine-tuning of
the base (no adapter; those domains are evaluated on the base, and later base stages forget them
like naive fine-tuning does); the base freezes at the end of stage n and adapters take over from
stage n + 1, so every domain learned through an adapter -- and every base domain once the base is
frozen -- stays exactly as it was. ``base_stages = 0`` is the paper's setting: a frozen
(pre-trained, e.g. ``forgetlab convert``-ed GPT-2) base from the start.

Why not PEFT: ``inject_adapter_in_model`` replaces each Linear by a wrapper, renaming the base
weights (``c_attn.weight`` -> ``c_attn.base_layer.weight``) and adding adapter tensors to the
model's state dict. forgetlab checkpoints are GPT state dicts read back into a freshly built GPT
(``load_model``), so a PEFT-injected run can neither resume nor be inspected; importing PEFT also
costs seconds (transformers) on every CLI start. The adapters here are forward hooks owned by the
mechanism: the model file stays the untouched base, the adapters live in the mechanism's state.
Because the adapters are outside ``model.parameters()``, this mechanism clips (and, under
torchrun, all-reduces) their gradients itself; the trainer's own clip sees no gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from forgetlab.config import ConfigError, RunConfig
from forgetlab.mechanisms.base import Batch, Mechanism, StepOutput, TrainContext, register

# The block projections of every FFN/attention variant, and the output head: a new domain's token
# frequencies live largely in the (often tied, hence frozen) output layer. Measured on the tiny
# preset, code -> math -> medical, base_stages = 1, rank 8: without lm_head the adapters lowered
# math's loss from 6.48 to 6.04 and medical's from 6.85 to 6.41; with it to 4.99 and 5.49.
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc", "w_gate", "w_up", "c_v", "lm_head")


class LoRALinear(nn.Module):
    """One adapter for one Linear: x -> (alpha / r) * dropout(x) A^T B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        dev = base.weight.device
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)) of nn.Linear
        a = (torch.rand(rank, base.in_features, generator=generator, device=generator.device)
             * 2 - 1) * bound
        self.A = nn.Parameter(a.to(dev))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        self.scale, self.dropout = alpha / rank, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)
        return (x @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype) * self.scale

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)


class _Route:
    """Which domain's adapter the hooks apply (None: none, e.g. while merged)."""

    def __init__(self) -> None:
        self.active: int | None = 0


class _Hook:
    """Forward hook adding the routed adapter's output. It holds its adapters, so a deep copy of
    the model (e.g. a distillation teacher) gets frozen copies of them, not the live ones."""

    def __init__(self, adapters: nn.ModuleList, route: _Route) -> None:
        self.adapters, self.route = adapters, route

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
                 ) -> torch.Tensor:
        if self.route.active is None:
            return out
        adapter = self.adapters[self.route.active]
        adapter.train(module.training)
        return out + adapter(args[0])


@register
class LoRA(Mechanism):
    """One LoRA adapter set per domain on a frozen base, routed by domain at evaluation."""

    name = "lora"
    incompatible = frozenset(
        {"packnet", "latent_replay", "ewc", "online_ewc", "si", "mas", "gem", "agem",
         "lifelong_moe"}
    )
    incompatible_reason = (
        "lora freezes the whole base and trains adapters outside the model's parameters: "
        "penalties and gradient projections (ewc, online_ewc, si, mas, gem, agem) would act on "
        "no trainable weight, packnet and lifelong_moe train base weights lora keeps frozen, and "
        "latent_replay's stored activations come through one domain's lower adapters while "
        "replay would train another domain's upper adapter on them"
    )

    class Knobs(Mechanism.Knobs):
        rank: int = Field(8, ge=1, description="adapter rank r")
        alpha: float = Field(16.0, gt=0.0, description="scale numerator: dW = (alpha / r) B A")
        targets: list[str] = Field(
            list(DEFAULT_TARGETS), min_length=1,
            description="names (last path component) of the nn.Linear modules to adapt",
        )
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
        merge: bool = Field(False, description="evaluate with W + dW folded into the weights")
        base_stages: int = Field(
            0, ge=0,
            description="leading stages that fine-tune the whole base without adapters; the "
            "base freezes after them",
        )

    saved = ("bank", "stage")

    def __init__(self, knobs: Knobs) -> None:
        super().__init__(knobs)
        self.knobs: LoRA.Knobs = knobs
        self.bank = nn.ModuleDict()  # target module name ('.' -> '__') -> one adapter per domain
        self.targets: dict[str, nn.Linear] = {}
        self.base: list[nn.Parameter] = []
        self.stage = 0
        self.route = _Route()
        self.train_per_token = 0  # adapter FLOPs of one training token

    # ------------------------------------------------------------------------------- set-up
    def check_run(self, run: RunConfig) -> None:
        n_domains = len(run.data.domains)
        if self.knobs.base_stages >= n_domains:
            raise ConfigError(
                f"mechanism 'lora': base_stages = {self.knobs.base_stages} leaves no stage for "
                f"adapters (data.domains has {n_domains}); allowed: 0..{n_domains - 1}"
            )

    def setup(self, ctx: TrainContext) -> None:
        k = self.knobs
        linears = {n: m for n, m in ctx.model.named_modules() if isinstance(m, nn.Linear)}
        self.targets = {n: m for n, m in linears.items() if n.rsplit(".", 1)[-1] in k.targets}
        if not self.targets:
            raise ConfigError(
                f"mechanism 'lora': targets = {k.targets} match no nn.Linear; the model has "
                f"{sorted({n.rsplit('.', 1)[-1] for n in linears})}"
            )
        tied = getattr(ctx.model, "wte", None)
        if k.merge and any(m.weight is getattr(tied, "weight", None) for m in self.targets.values()):
            raise ConfigError(
                "mechanism 'lora': merge would write the lm_head adapter into the tied token "
                "embedding; leave lm_head out of targets or set model.tie_embeddings = false"
            )
        n_domains = len(ctx.stream.domains)
        # the base weights this mechanism freezes (not those the model itself keeps frozen)
        self.base = [p for p in ctx.model.parameters() if p.requires_grad]
        for name, linear in self.targets.items():
            adapters = nn.ModuleList(
                LoRALinear(linear, k.rank, k.alpha, k.dropout, ctx.generator)
                for _ in range(n_domains)
            )
            self.bank[name.replace(".", "__")] = adapters
            linear.register_forward_hook(_Hook(adapters, self.route))
        ctx.optimizer.add_param_group(
            {"params": list(self.bank.parameters()), "weight_decay": ctx.config.train.weight_decay}
        )
        self._activate(0)
        # forward 2 r (in + out) per token and Linear, x3 for forward + backward (Kaplan et al.
        # 2020's 6N rule applied to the adapter's N); the weight gradients the frozen base no
        # longer needs are not subtracted
        self.train_per_token = 3 * sum(
            2 * k.rank * (m.in_features + m.out_features) for m in self.targets.values()
        )

    def _route_of(self, domain: int) -> int | None:
        """The adapter serving ``domain``; None for a domain the base itself learned."""
        return None if domain < self.knobs.base_stages else domain

    def _activate(self, stage: int) -> None:
        """Train the base in a base stage, else adapter ``stage`` only (the frozen base: AdamW
        skips parameters without a gradient)."""
        self.stage = stage
        self.route.active = self._route_of(stage)
        for p in self.base:
            p.requires_grad_(self.route.active is None)
        for adapters in self.bank.values():
            for d, adapter in enumerate(adapters):
                adapter.requires_grad_(d == self.route.active)

    def _current(self) -> list[nn.Parameter]:
        if self.route.active is None:
            return []
        return [p for a in self.bank.values() for p in a[self.route.active].parameters()]

    # -------------------------------------------------------------------------------- hooks
    def on_stage_start(self, ctx: TrainContext) -> None:
        self._activate(ctx.stage)

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        if self.route.active is not None:
            self.count_flops(self.train_per_token * batch.n_tokens)
        return {}

    def after_backward(self, ctx: TrainContext) -> None:
        params = [p for p in self._current() if p.grad is not None]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in params:  # DDP averages only the model's own gradients
                dist.all_reduce(p.grad)
                p.grad.div_(dist.get_world_size())
        if ctx.config.train.grad_clip > 0 and params:
            norm = torch.nn.utils.clip_grad_norm_(params, ctx.config.train.grad_clip)
            ctx.log["lora/grad_norm"] = float(norm)

    @contextlib.contextmanager
    def eval_scope(self, ctx: TrainContext, domain_index: int) -> Iterator[None]:
        """Domain j with adapter j (the bare base for a base domain); a domain beyond the one in
        training as the model stands."""
        route = self._route_of(min(domain_index, ctx.stage))
        saved: dict[str, torch.Tensor] = {}
        try:
            if route is None:
                self.route.active = None
            elif self.knobs.merge:
                self.route.active = None
                with torch.no_grad():
                    for name, linear in self.targets.items():
                        saved[name] = linear.weight.detach().clone()
                        delta = self.bank[name.replace(".", "__")][route].delta()
                        linear.weight.add_(delta.to(linear.weight.dtype))
            else:
                self.route.active = route
            yield
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    self.targets[name].weight.copy_(value)
            self.route.active = self._route_of(ctx.stage)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.bank.parameters())

    def on_restore(self) -> None:
        self._activate(self.stage)
