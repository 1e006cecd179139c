"""Budgets: ``same_shape`` (every group at the base steps) and ``matched_flops``.

Under ``matched_flops`` each group's new-data steps per stage are chosen so that its total
training FLOPs (the accountant's ``training_total``: model FLOPs of every step, sleep-phase extra
steps, and what mechanisms report through ``flops(ctx)``, e.g. teacher passes) match the
reference group's within the spec's tolerance (2% by default).

Why calibration: mechanisms know their extra compute only through the accountant while they run
(a replay mix changes tokens per step, a teacher pass happens inside ``loss``, a sleep phase calls
``extra_step``), so the robust estimate runs each distinct group config for a few real steps of
its first two stages with the trainer's own step and hooks, and reads the accountant. From that,
stage ``s`` costs ``per_step[s] * S + per_stage[s]`` FLOPs (stages past the calibrated ones repeat
the last calibrated stage). A group without mechanisms needs no calibration: its FLOPs are the
model's per-token FLOPs times its tokens, exactly what the accountant adds up.

The calibration window defaults to the reference's steps per stage (at most 256), so periodic
work (a sleep phase every F steps) is seen at its real rate; a group's total is then exact up to
one period's work. Calibration costs two stages of real steps per group, so a mechanism whose
extra compute is known ahead says so through ``Mechanism.estimate_flops(cfg, knobs,
steps_per_stage, per_token)`` (its extra training FLOPs over the whole run, extra steps
included; None when only running it tells): replay without herding (0: replayed rows replace
stream rows), sleep on real samples (its phases) and selective_write (its scoring passes). When
every mechanism of a group has an estimate, method ``auto`` uses them and skips calibration; the
tests hold the estimates equal to the accountant's totals of real runs. A calibration already in
an experiment's cache still wins, so an existing study keeps its matched steps and run ids.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetlab.config import ConfigError, RunConfig

FlopsFn = Callable[[int], float]


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs of a whole run as a function of steps per stage."""

    per_step: tuple[float, ...]  # new-data steps' FLOPs, per calibrated stage
    per_stage: tuple[float, ...]  # fixed FLOPs of each calibrated stage (hooks at its ends)
    n_stages: int
    source: str  # "analytic" | "calibrated" | "model only"

    def total(self, steps: int) -> float:
        last = len(self.per_step) - 1
        return sum(
            self.per_step[min(s, last)] * steps + self.per_stage[min(s, last)]
            for s in range(self.n_stages)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_step": list(self.per_step),
            "per_stage": list(self.per_stage),
            "n_stages": self.n_stages,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlopsModel:
        return cls(tuple(d["per_step"]), tuple(d["per_stage"]), d["n_stages"], d["source"])


def vocab_size_of(cfg: RunConfig) -> int:
    """The vocabulary the model will have: the prepared tokenizer's, else the name's nominal size."""
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size
    assert cfg.data.tokenizer is not None
    return _tokenizer_vocab(cfg.data.tokenizer, cfg.data.cache_dir)


@functools.lru_cache(maxsize=16)
def _tokenizer_vocab(name: str, cache_dir: str | None) -> int:
    from forgetlab.data import DataError, load_tokenizer
    from forgetlab.data.tokenizers import parse_name

    try:
        return load_tokenizer(name, cache_dir).vocab_size
    except (DataError, OSError):
        return parse_name(name) or 50257


def model_per_token(cfg: RunConfig) -> dict[str, int]:
    """The accountant's per-token FLOPs (forward, train) for this config's model."""
    model = cfg.model.model_copy(update={"vocab_size": vocab_size_of(cfg)})
    return _per_token(model.model_dump_json())


@functools.lru_cache(maxsize=64)
def _per_token(model_json: str) -> dict[str, int]:
    from forgetlab.config import ModelConfig
    from forgetlab.models import model_flops_per_token

    model = ModelConfig.model_validate_json(model_json)
    return model_flops_per_token(model, model.block_size)


def tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size


def analytic_model(cfg: RunConfig) -> FlopsModel:
    """Model FLOPs only (exact for a group without mechanisms)."""
    per_step = float(model_per_token(cfg)["train"] * tokens_per_step(cfg))
    source = "analytic" if not cfg.mechanisms else "model only"
    return FlopsModel((per_step,), (0.0,), len(cfg.data.domains), source)


def _training_flops(trainer: Any) -> float:
    from forgetlab.train.flops import mechanism_flops

    t = trainer.flops.totals()
    return t["train"] + t["extra_steps"] + mechanism_flops(trainer.mechanisms, trainer.ctx)


def calibrate(cfg: RunConfig, steps: int = 4) -> FlopsModel:
    """Run ``steps`` real steps of the first (up to) two stages, hooks included, and read the
    accountant: the per-step and per-stage FLOPs of this config."""
    from forgetlab.train import Trainer

    small = cfg.model_copy(deep=True)
    small.data.val_batches = 1  # evaluation sets are built at setup; they cost no training FLOPs
    small.data.probes = []  # nor do probes, which are only evaluated
    small.base_model = None  # FLOPs do not depend on the weights a run starts from
    per_step, per_stage = [], []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(small, Path(tmp) / "calibration", progress=False)
        trainer._setup()
        ctx = trainer.ctx
        for m in trainer.mechanisms:
            m.setup(ctx)
        for stage in range(min(2, len(small.data.domains))):
            ctx.stage, ctx.step = stage, 0
            start = _training_flops(trainer)
            for m in trainer.mechanisms:
                m.on_stage_start(ctx)
            before_steps = _training_flops(trainer)
            for step in range(steps):
                ctx.step = step
                trainer.steps.train_step(stage)
                ctx.global_step += 1
            after_steps = _training_flops(trainer)
            for m in trainer.mechanisms:
                m.on_stage_end(ctx)
            end = _training_flops(trainer)
            per_step.append((after_steps - before_steps) / steps)
            per_stage.append((before_steps - start) + (end - after_steps))
    return FlopsModel(tuple(per_step), tuple(per_stage), len(cfg.data.domains), "calibrated")


def _analytic_mechanisms(cfg: RunConfig) -> FlopsFn | None:
    """Model FLOPs plus every mechanism's ``estimate_flops``, or None if one lacks it."""
    from forgetlab.mechanisms import MECHANISMS

    per_token = model_per_token(cfg)
    estimates = []
    for mc in cfg.mechanisms:
        cls = MECHANISMS[mc.name]
        knobs = cls.Knobs.model_validate(mc.knobs)
        if cls.estimate_flops(cfg, knobs, 1, per_token) is None:
            return None
        estimates.append((cls.estimate_flops, knobs))
    base = analytic_model(cfg)
    return lambda s: base.total(s) + sum(
        fn(cfg, knobs, s, per_token) or 0.0 for fn, knobs in estimates
    )


def flops_function(
    cfg: RunConfig, method: str, steps: int, allow_calibration: bool = True
) -> tuple[FlopsFn, dict[str, Any]]:
    """Total training FLOPs as a function of steps per stage, and how it was obtained."""
    if not cfg.mechanisms or method == "analytic":
        model = analytic_model(cfg)
        return model.total, model.to_dict()
    if method == "auto":
        fn = _analytic_mechanisms(cfg)
        if fn is not None:
            return fn, {"source": "mechanism estimate_flops"}
    if not allow_calibration:
        model = analytic_model(cfg)
        return model.total, model.to_dict()
    model = calibrate(cfg, steps)
    return model.total, model.to_dict()


def solve_steps(fn: FlopsFn, target: float, tolerance: float, what: str) -> int:
    """The steps per stage whose total FLOPs come closest to ``target`` (``fn`` is increasing);
    refused with a clear error when even the closest misses the tolerance."""
    lo, hi = 1, 1
    while fn(hi) < target and hi < 10**9:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fn(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda s: abs(fn(s) - target))
    error = abs(fn(best) - target) / target
    if error > tolerance:
        raise ConfigError(
            f"matched_flops: group {what} cannot match the reference within {tolerance:.1%} "
            f"(best {best} steps per stage is {error:.1%} off); raise the reference's "
            "train.steps_per_stage or matched_flops.tolerance"
        )
    return best


def calibration_window(configs: dict[str, RunConfig], reference: str, steps: int | None) -> int:
    """Steps per calibrated stage: as given, else the reference's steps per stage, at most 256."""
    return steps or min(configs[reference].train.steps_per_stage, 256)


def group_flops(
    configs: dict[str, RunConfig],
    method: str,
    calibration_steps: int,
    cache: dict[str, Any] | None = None,
    allow_calibration: bool = True,
) -> tuple[dict[str, FlopsFn], dict[str, dict[str, Any]], dict[str, Any]]:
    """Each group's training FLOPs as a function of steps per stage (``configs``: group -> its
    same-shape config), how each was found, and the updated calibration cache.

    ``cache`` (config hash -> a calibrated FlopsModel dict, kept in the experiment directory) keeps
    calibrations across invocations, so matched step counts, and with them run ids, never drift.
    """
    from forgetlab.train.rundir import config_hash

    cache = copy.deepcopy(cache or {})
    fns: dict[str, FlopsFn] = {}
    found: dict[str, dict[str, Any]] = {}
    for name, cfg in configs.items():
        key = f"{config_hash(cfg)}@{calibration_steps}"
        hit = cache.get(key)
        if hit and hit.get("source") == "calibrated":
            fns[name], found[name] = FlopsModel.from_dict(hit).total, hit
            continue
        fns[name], found[name] = flops_function(cfg, method, calibration_steps, allow_calibration)
        if found[name].get("source") == "calibrated":
            cache[key] = found[name]
    return fns, found, cache


def match_steps(
    fns: dict[str, FlopsFn], reference: str, reference_steps: int, tolerance: float
) -> dict[str, int]:
    """Steps per stage of every group so its training FLOPs match the reference's."""
    target = fns[reference](reference_steps)
    return {
        name: reference_steps if name == reference else solve_steps(fn, target, tolerance, name)
        for name, fn in fns.items()
    }
