"""The mechanism hook contract: continual-learning strategies as small plugins on the trainer.

A mechanism is a class registered by name. The trainer calls, in this order, whatever it defines:

* ``check_run(run)`` when the run's config is validated, before any data, model or directory
  exists: refuse a run this mechanism cannot work in (the model's parts, the stream's length)
* ``setup(ctx)`` once per run (after the model and optimizer exist, before any evaluation)
* ``on_stage_start(ctx)`` / ``on_stage_end(ctx)`` around each domain's training
* ``make_batch(ctx, batch) -> batch`` for every micro-batch (mix replay in, re-weight tokens)
* ``loss(ctx, batch, output) -> {name: tensor}`` extra loss terms added to the objective
* ``after_backward(ctx)`` after gradients are accumulated (gradient projection, masks)
* ``after_step(ctx)`` after the optimizer step (re-apply weight masks, running statistics)
* ``eval_scope(ctx, domain_index)`` a context manager around evaluating one domain (task routing)
* ``on_restore()`` after a resume has restored its saved state (re-freeze weights, re-route)

The base class keeps the bookkeeping every mechanism needs, so a mechanism only declares it:

* **Saved state.** ``saved`` names the attributes a killed run needs to resume exactly (each
  class lists its own; the base class collects them along the class hierarchy). ``state_dict()``
  copies them to the CPU; ``load_state_dict(state)`` puts them back on the run's device
  (``self.device``, set before ``setup``): tensors and containers of tensors are moved, an
  object with its own ``state_dict``/``load_state_dict(state, device)`` (a replay buffer, the
  quadratic penalty) restores itself, and an ``nn.Module`` is loaded in place (so the
  optimizer's references stay valid). A property can stand for state kept in another form.
* **One FLOP meter.** ``count_flops(n)`` adds the extra compute a hook spent (teacher or scoring
  forwards, Fisher passes, generation); ``flops(ctx)`` reads it, so budgets can be matched. Count
  exact integers where the count is exact (tokens x the model's integer FLOPs per token): ints
  sum without rounding. The meter is always saved.

Knobs are declared as a pydantic model (``Knobs``), so unknown or mistyped knobs fail before any
work with the list of valid ones. ``incompatible`` names mechanisms this one cannot run beside,
``incompatible_reason`` says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from forgetlab.config import ConfigError, MechanismConfig, format_validation_error

if TYPE_CHECKING:
    from forgetlab.config import RunConfig
    from forgetlab.data import Stream


@dataclass
class Batch:
    """One micro-batch: inputs, next-token targets, optional per-token loss weights.

    ``weights`` (same shape as ``y``) multiplies each token's loss; 0 means the token gives no
    gradient (selective write). ``None`` means all ones. ``replayed`` (shape ``(B,)``, bool) marks
    rows a mechanism drew from a memory rather than the stream, so that gates and memory writers
    treat only stream rows as new data whatever the mechanisms' order; ``None`` means no row is.
    """

    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor | None = None
    domain: int = 0
    replayed: torch.Tensor | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.y.numel())


@dataclass
class StepOutput:
    """What the forward pass produced for a batch, for mechanisms' ``loss`` hooks."""

    logits: torch.Tensor
    token_loss: torch.Tensor  # (B, T) cross-entropy per token, float32, unweighted


@dataclass
class TrainContext:
    """The small, explicit view of the run that mechanisms receive (never the trainer itself)."""

    config: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stream: Stream
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    generator: torch.Generator  # seeded from the run; mechanisms draw randomness from it
    stage: int = 0  # 0-based index of the domain being trained
    step: int = 0  # optimizer steps in this stage
    global_step: int = 0
    extra_step: Callable[[Batch], float] | None = None  # one optimizer step on a given batch
    log: dict[str, float] = field(default_factory=dict)  # scalars the trainer writes to curves

    @property
    def domain(self) -> str:
        return self.stream.domains[self.stage]


class Mechanism:
    """Base class: every hook is a no-op, so a mechanism defines only the moments it acts on."""

    name: ClassVar[str] = ""
    incompatible: ClassVar[frozenset[str]] = frozenset()
    incompatible_reason: ClassVar[str] = ""  # why, shown when a spec combines them
    saved: ClassVar[tuple[str, ...]] = ()  # this class's own attributes in the saved state

    class Knobs(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.device = torch.device("cpu")  # the run's device, known from attach()
        self.flops_spent: int | float = 0  # the FLOP meter: see count_flops

    def attach(self, ctx: TrainContext) -> None:
        """The trainer's first call: remember the run's device (where saved state is restored
        to), then ``setup``."""
        self.device = ctx.device
        self.setup(ctx)

    def check_run(self, run: RunConfig) -> None:
        """Raise :class:`ConfigError` (naming the keys and values at odds) when these knobs cannot
        work in ``run``. Called by :func:`build_mechanisms` with the run's config, before any data,
        model or run directory exists, so a misfit is reported up front and leaves nothing behind."""

    def setup(self, ctx: TrainContext) -> None:
        """Called once, before the initial evaluation."""

    def on_stage_start(self, ctx: TrainContext) -> None:
        """Called before the first step of stage ``ctx.stage``."""

    def on_stage_end(self, ctx: TrainContext) -> None:
        """Called after the last step of stage ``ctx.stage``, before evaluation."""

    def make_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        return batch

    def loss(self, ctx: TrainContext, batch: Batch, output: StepOutput) -> dict[str, torch.Tensor]:
        return {}

    def after_backward(self, ctx: TrainContext) -> None:
        """Gradients are accumulated and not yet clipped."""

    def after_step(self, ctx: TrainContext) -> None:
        """The optimizer has stepped."""

    @contextlib.contextmanager
    def eval_scope(self, ctx: TrainContext, domain_index: int) -> Iterator[None]:
        yield

    def count_flops(self, n: float) -> None:
        """Add ``n`` FLOPs of extra compute to the meter (an int stays exact)."""
        self.flops_spent += n

    def flops(self, ctx: TrainContext) -> float:
        """The extra compute spent so far (beyond the trainer's own steps)."""
        return float(self.flops_spent)

    @classmethod
    def estimate_flops(
        cls, cfg: RunConfig, knobs: Any, steps_per_stage: int, per_token: dict[str, int]
    ) -> float | None:
        """This mechanism's extra training FLOPs over a whole run of ``cfg`` at
        ``steps_per_stage`` (extra optimizer steps included), known before the run, given the
        model's ``per_token`` FLOPs (``forward``, ``train``); None when only running it tells
        (matched-FLOPs budgets then calibrate)."""
        return None

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the mechanism owns outside the model (e.g. LoRA adapters), so that run
        records count what a run really trains."""
        return []

    @classmethod
    def saved_names(cls) -> list[str]:
        """Every class's ``saved`` along the hierarchy, base classes first, each name once."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for n in vars(klass).get("saved", ()):
                if n not in names:
                    names.append(n)
        return names

    def state_dict(self) -> dict[str, Any]:
        """The FLOP meter and the declared attributes, copied to the CPU."""
        state: dict[str, Any] = {"flops": self.flops_spent}
        for n in self.saved_names():
            value = getattr(self, n)
            state[n] = _to_cpu(value.state_dict() if _has_state(value) else value)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved onto ``self.device``, then ``on_restore``."""
        expected = {"flops", *self.saved_names()}
        if set(state) != expected:
            raise ValueError(
                f"mechanism {self.name!r}: saved state has {sorted(state)}, "
                f"expected {sorted(expected)}"
            )
        self.flops_spent = state["flops"]
        for n in self.saved_names():
            current = getattr(self, n)
            if isinstance(current, nn.Module):
                current.load_state_dict(state[n])  # in place: device and references kept
            elif _has_state(current):
                current.load_state_dict(state[n], self.device)
            else:
                setattr(self, n, _to_device(state[n], self.device))
        self.on_restore()

    def on_restore(self) -> None:
        """The saved state is back (a resumed run, after ``setup``): redo what it implies."""


def _has_state(value: Any) -> bool:
    return hasattr(value, "state_dict") and hasattr(value, "load_state_dict")


def _to_cpu(value: Any) -> Any:
    """A copy with every tensor detached on the CPU (dicts, lists and tuples recursed)."""
    return _map_tensors(value, lambda t: t.detach().cpu().clone())


def _to_device(value: Any, device: torch.device) -> Any:
    return _map_tensors(value, lambda t: t.to(device, copy=True))


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


MECHANISMS: dict[str, type[Mechanism]] = {}


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """Class decorator: make a mechanism available by its ``name`` in specs and on the CLI."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty `name`")
    if cls.name in MECHANISMS and MECHANISMS[cls.name] is not cls:
        raise TypeError(f"mechanism name {cls.name!r} is registered twice")
    MECHANISMS[cls.name] = cls
    return cls


def build_mechanisms(
    configs: list[MechanismConfig], run: RunConfig | None = None
) -> list[Mechanism]:
    """Instantiate the configured mechanisms, validating names, knobs and combinations, and,
    given the ``run`` they are for, that each fits it (:meth:`Mechanism.check_run`)."""
    out: list[Mechanism] = []
    for i, cfg in enumerate(configs):
        cls = MECHANISMS.get(cfg.name)
        if cls is None:
            raise ConfigError(
                f"mechanisms[{i}].name = {cfg.name!r} is not a mechanism; "
                f"allowed: {sorted(MECHANISMS) or '(none registered)'}"
            )
        try:
            knobs = cls.Knobs.model_validate(cfg.knobs)
        except ValidationError as e:
            raise ConfigError(
                format_validation_error(e, cls.Knobs, f"mechanism {cfg.name!r}")
            ) from None
        out.append(cls(knobs))
    names = [m.name for m in out]
    for m in out:
        if names.count(m.name) > 1:
            raise ConfigError(f"mechanism {m.name!r} is listed twice")
        clash = m.incompatible & set(names)
        if clash:
            why = f": {m.incompatible_reason}" if m.incompatible_reason else ""
            raise ConfigError(f"mechanism {m.name!r} cannot be combined with {sorted(clash)}{why}")
        if run is not None:
            m.check_run(run)
    return out


def parse_mechanism_option(text: str) -> MechanismConfig:
    """Parse the CLI form ``name:key=value,key=value`` into a :class:`MechanismConfig`."""
    from forgetlab.config import parse_value

    name, _, rest = text.partition(":")
    knobs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--mechanism {text!r}: {item!r} is not of the form key=value")
        knobs[key.strip()] = parse_value(value.strip())
    if not name.strip():
        raise ConfigError(f"--mechanism {text!r} has no mechanism name")
    return MechanismConfig(name=name.strip(), **knobs)
