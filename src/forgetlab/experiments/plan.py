"""The plan: runs, tokens, FLOPs, wall time here and GPU-hours and cost on reference GPUs.

FLOPs come from the same accountant a run uses (model FLOPs per token x tokens, attention
included, plus mechanism extras from ``budgets``); the proposal-style ``6ND`` (N = all parameters,
D = training tokens) is shown beside them so a proposal's arithmetic can be checked: the T/W/R
ablation (docs/cl_mechanisms.md) has 6 x 124M x 1B = 7.44e17 FLOPs, 4,960 s per run at an
effective 150 TFLOP/s, and 24 runs = 33.07 GPU-hours (it rounds 4,960 s up to 1.4 h, hence its
33.6).

Wall time on this machine uses a measured throughput: a few steps of the reference group through
the trainer's own step (``forgetlab.train.bench``) when one step is cheap and the data is
prepared, else the matmul peak times the spec's ``plan.assumed_mfu``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from forgetlab.config import RunConfig
from forgetlab.experiments.budgets import (
    FlopsFn,
    analytic_model,
    calibration_window,
    flops_function,
    group_flops,
    match_steps,
    model_per_token,
    tokens_per_step,
    vocab_size_of,
)
from forgetlab.experiments.design import expand, same_shape_configs
from forgetlab.experiments.spec import GPU, ExperimentSpec
from forgetlab.train.rundir import config_hash

log = logging.getLogger("forgetlab.experiments")
BENCH_MAX_STEP_S = 2.0  # benchmark only when one step is estimated below this
CALIBRATE_MAX_S = 60.0  # plan calibrates mechanism groups only when that is estimated this cheap


def six_nd(n_params: float, tokens: float) -> float:
    """Training FLOPs by the 6ND rule (Kaplan et al. 2020, eq. 2.1 with C = 6N per token)."""
    return 6.0 * n_params * tokens


def gpu_seconds(flops: float, gpu: GPU) -> float:
    return flops / gpu.effective_flops


def gpu_cost(flops: float, gpu: GPU) -> dict[str, float]:
    """Seconds, GPU-hours and price of ``flops`` on one ``gpu`` at its stated utilisation."""
    seconds = gpu_seconds(flops, gpu)
    return {
        "seconds": seconds,
        "gpu_hours": seconds / 3600,
        "cost": seconds / 3600 * gpu.price_per_hour,
    }


@functools.lru_cache(maxsize=64)
def _parameters(model_json: str) -> int:
    import torch

    from forgetlab.config import ModelConfig
    from forgetlab.models.gpt import GPT

    with torch.device("meta"):
        return GPT(ModelConfig.model_validate_json(model_json)).num_params()


def parameters(cfg: RunConfig) -> int:
    """All parameters of the config's model (tied weights once), counted without allocating it."""
    model = cfg.model.model_copy(update={"vocab_size": vocab_size_of(cfg)})
    return _parameters(model.model_dump_json())


def eval_tokens(cfg: RunConfig) -> int:
    """Tokens the trainer evaluates: every domain and probe before and after each stage, plus
    in-stage evaluations of the new domain every ``eval_every`` steps."""
    n, probes = len(cfg.data.domains), len(cfg.data.probes)
    per_domain = cfg.data.val_batches * cfg.train.batch_size * cfg.model.block_size
    steps, every = cfg.train.steps_per_stage, cfg.train.eval_every
    in_stage = (steps - 1) // every if every else 0
    return (n + 1) * (n + probes) * per_domain + n * in_stage * per_domain


def eval_flops(cfg: RunConfig) -> float:
    """Forward FLOPs of every evaluation a run makes (:func:`eval_tokens`)."""
    return float(model_per_token(cfg)["forward"] * eval_tokens(cfg))


def run_flops(cfg: RunConfig) -> float:
    """Training plus evaluation FLOPs of one run, from the analytic model and the mechanisms'
    ``estimate_flops`` (never calibrating, so it is instant): the runner's cost estimate."""
    steps = cfg.train.steps_per_stage
    training, _ = flops_function(cfg, "auto", steps, allow_calibration=False)
    return training(steps) + eval_flops(cfg)


def _busy_cpu() -> float | None:
    """The 1-minute load average when other work already occupies half the cores or more."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None
    return load if load >= 0.5 * (os.cpu_count() or 1) else None


def measure_throughput(cfg: RunConfig, assumed_mfu: float, bench: bool = True) -> dict[str, Any]:
    """Training FLOP/s on this machine for ``cfg``: benchmarked, or peak x ``assumed_mfu``."""
    from forgetlab.train.device import resolve_device, resolve_precision
    from forgetlab.train.flops import peak_flops

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.train.precision, device)
    peak, peak_source = peak_flops(device, precision)
    peak = peak or 1e11
    step_flops = model_per_token(cfg)["train"] * cfg.train.batch_size * cfg.model.block_size
    if bench and step_flops / (peak * assumed_mfu) < BENCH_MAX_STEP_S:
        from forgetlab.data import DataError
        from forgetlab.train.bench import bench_train

        one_domain = cfg.model_copy(deep=True)
        one_domain.data.domains = cfg.data.domains[:1]
        one_domain.data.probes = []  # evaluated only, never in a training step
        one_domain.data.val_batches = 1
        one_domain.train.grad_accum = 1
        try:
            busy = _busy_cpu() if device.type == "cpu" else None
            res = bench_train(one_domain, steps=3, warmup=1)
            source = "bench train"
            if busy:
                source += (
                    f"; the CPU was busy (load average {busy:.1f} on {os.cpu_count()} cores), "
                    "so the wall estimate is pessimistic"
                )
            return {
                "flops_per_s": res["achieved_flops_per_s"],
                "source": source,
                "device": str(device),
            }
        except DataError as e:
            log.info("plan: no benchmark (%s); using peak x assumed MFU", e)
    return {
        "flops_per_s": peak * assumed_mfu,
        "device": str(device),
        "source": f"peak ({peak_source}) x assumed MFU {assumed_mfu}",
    }


def build_plan(
    spec: ExperimentSpec,
    scale: str | None,
    bench: bool = True,
    calibration_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``forgetlab plan`` shows, as a JSON-able dict."""
    configs, reference = same_shape_configs(spec)
    ref_cfg = configs[reference]
    throughput = measure_throughput(ref_cfg, spec.plan.assumed_mfu, bench)
    window = calibration_window(configs, reference, spec.matched_flops.calibration_steps)
    step_s = (
        model_per_token(ref_cfg)["train"] * tokens_per_step(ref_cfg) / throughput["flops_per_s"]
    )
    n_mech = sum(bool(c.mechanisms) for c in configs.values())
    cheap = step_s * 2 * window * n_mech < CALIBRATE_MAX_S
    fns, found, _ = group_flops(
        configs, spec.matched_flops.method, window, calibration_cache, allow_calibration=cheap
    )
    matched = None
    if "matched_flops" in spec.budgets:
        matched = match_steps(
            fns, reference, ref_cfg.train.steps_per_stage, spec.matched_flops.tolerance
        )
    expand_runs = expand(spec, matched)
    runs = [_estimate(r.record(), r.config, fns[r.group], throughput) for r in expand_runs]
    distinct = list({r["run_id"]: r for r in runs}.values())
    keys = ("train_tokens", "flops_6nd", "flops_training", "flops_eval", "wall_s")
    totals = {k: sum(r[k] for r in distinct) for k in keys}
    gpus = []
    for gpu in spec.plan.gpus:
        with_eval = gpu_cost(totals["flops_training"] + totals["flops_eval"], gpu)
        doc = gpu_cost(totals["flops_6nd"], gpu)
        gpus.append(
            {
                **gpu.model_dump(),
                "effective_flops": gpu.effective_flops,
                "seconds_per_run": with_eval["seconds"] / len(distinct),
                "gpu_hours": with_eval["gpu_hours"],
                "cost": with_eval["cost"],
                "seconds_per_run_6nd": doc["seconds"] / len(distinct),
                "gpu_hours_6nd": doc["gpu_hours"],
                "cost_6nd": doc["cost"],
            }
        )
    bases = base_estimates([r.config for r in expand_runs], spec.plan.gpus, throughput)
    return {
        "name": spec.name,
        "scale": scale,
        "design": spec.design.kind,
        "reference": reference,
        "factors": {f: list(levels) for f, levels in spec.factors.items()},
        "n_runs": len(runs),
        "n_distinct_runs": len(distinct),
        "runs": runs,
        "totals": totals,
        "throughput": throughput,
        "gpus": gpus,
        "flops_by_group": found,
        "matched_steps": matched,
        "base_models": bases,
    }


def base_estimates(
    configs: list[RunConfig], gpus: list[GPU], throughput: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each distinct ``[base_model]`` the runs declare, with its cost counted once: tokens,
    FLOPs, wall time here and on the reference GPUs, how many distinct runs start from it, and
    whether this cache holds it trained already (``cached``; None when its data is not
    prepared, so the key cannot be known yet)."""
    from forgetlab.train.base_model import base_run_config, data_label, declaration_hash

    found: dict[str, dict[str, Any]] = {}
    users: dict[str, set[str]] = {}
    for cfg in configs:
        if cfg.base_model is None:
            continue
        declared = declaration_hash(cfg)
        users.setdefault(declared, set()).add(config_hash(cfg))
        if declared in found:
            continue
        base = base_run_config(cfg)
        steps = base.train.steps_per_stage * len(base.data.domains)
        est = _estimate({}, base, analytic_model(base).total, throughput)
        found[declared] = {
            "declaration": declared,
            "domains": list(base.data.domains),
            "data": data_label(base),
            "steps": steps,
            **{k: est[k] for k in ("parameters", "train_tokens", "flops_6nd", "flops_training",
                                   "flops_eval", "wall_s")},
            "gpus": [
                {"name": g.name, **gpu_cost(est["flops_training"] + est["flops_eval"], g)}
                for g in gpus
            ],
            "cached": _cached(cfg),
        }
    return [{**b, "runs": len(users[k])} for k, b in found.items()]


def _cached(cfg: RunConfig) -> bool | None:
    from forgetlab.data import DataError
    from forgetlab.train.base_model import locate

    try:
        return locate(cfg).status() == "finished"
    except DataError:
        return None


def _estimate(
    record: dict[str, Any], cfg: RunConfig, fn: FlopsFn, throughput: dict[str, Any]
) -> dict[str, Any]:
    n = len(cfg.data.domains)
    tokens = n * cfg.train.steps_per_stage * tokens_per_step(cfg)
    training = fn(cfg.train.steps_per_stage)
    evaluation = eval_flops(cfg)
    return {
        **record,
        "parameters": parameters(cfg),
        "train_tokens": tokens,
        "flops_6nd": six_nd(parameters(cfg), tokens),
        "flops_training": training,
        "flops_eval": evaluation,
        "wall_s": (training + evaluation) / throughput["flops_per_s"],
    }
