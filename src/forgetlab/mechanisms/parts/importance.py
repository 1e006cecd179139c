"""Parameter importance for the quadratic-penalty mechanisms: Fisher (EWC), path integral (SI),
output sensitivity (MAS), as pure functions over any ``nn.Module``; plus the window sampling and
FLOP rates that the data-driven mechanisms share.

Why per-sample gradients: the diagonal Fisher is the *mean of squared* per-sample score vectors,
F_i = E_x[(d log p(x|theta) / d theta_i)^2] (Kirkpatrick et al. 2017, the F of eq. 3;
Kunstner et al. 2019). Squaring the gradient of a mini-batch mean (as Avalanche's EWC does)
gives (E g)^2, which is not the Fisher: the cross terms between samples do not cancel and the
value shrinks with the batch size. ``torch.func`` computes the per-sample gradients in one
vectorised pass, so the exact estimator costs the same passes as the wrong one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from forgetlab.models import model_flops_per_token

if TYPE_CHECKING:
    from forgetlab.mechanisms.base import TrainContext

Forward = Callable[..., torch.Tensor]
"""The module's forward with the parameters being differentiated (``forward(x) -> output``)."""
SampleFn = Callable[..., torch.Tensor]
"""``fn(forward, *sample) -> scalar``; every sample tensor keeps a leading batch dim of 1."""


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that learn, by name (tied weights once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def mean_per_sample_gradient_statistic(
    model: nn.Module,
    fn: SampleFn,
    samples: Sequence[torch.Tensor],
    statistic: Callable[[torch.Tensor], torch.Tensor],
    weights: torch.Tensor | None = None,
    chunk: int = 8,
) -> dict[str, torch.Tensor]:
    """sum_n w_n * statistic(grad_theta fn(x_n)) / sum_n w_n, per trainable parameter.

    ``samples`` are tensors with the sample index first; ``chunk`` samples are differentiated per
    vectorised pass (memory: chunk x parameters). The model is put in eval mode (no dropout) for
    the passes and restored after.
    """
    params = {n: p.detach() for n, p in trainable(model).items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def one(p: dict[str, torch.Tensor], *sample: torch.Tensor) -> torch.Tensor:
        def forward(*args: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (p, buffers), args)

        return fn(forward, *(s.unsqueeze(0) for s in sample))

    per_sample = vmap(grad(one), in_dims=(None, *([0] * len(samples))), randomness="same")
    n = samples[0].shape[0]
    device = samples[0].device
    w = torch.ones(n, device=device) if weights is None else weights.to(device, torch.float32)
    total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # attention kernels without a vmap batching rule fall back to a loop: correct, slower
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for lo in range(0, n, chunk):
                grads = per_sample(params, *(s[lo : lo + chunk] for s in samples))
                for k, g in grads.items():
                    total[k] += torch.tensordot(w[lo : lo + chunk], statistic(g.float()), dims=1)
    finally:
        model.train(was_training)
    return {k: v / w.sum() for k, v in total.items()}


def diagonal_fisher(
    model: nn.Module,
    log_likelihood: SampleFn,
    samples: Sequence[torch.Tensor],
    weights: torch.Tensor | None = None,
    chunk: int = 8,
) -> dict[str, torch.Tensor]:
    """F_i = E_n[(d log p(sample_n) / d theta_i)^2] (Kirkpatrick 2017, F of eq. 3).

    ``log_likelihood(forward, *sample)`` is the log-likelihood of one sample. Labels drawn from
    the model give the (Monte-Carlo) true Fisher, data labels the empirical Fisher; ``weights``
    turn an enumeration of labels into the exact expectation over them.
    """
    return mean_per_sample_gradient_statistic(
        model, log_likelihood, samples, torch.square, weights, chunk
    )


def output_sensitivity(
    model: nn.Module, inputs: torch.Tensor, chunk: int = 8
) -> dict[str, torch.Tensor]:
    """MAS importance Omega_i = E_n |d ||F(x_n)||_2^2 / d theta_i| (Aljundi et al. 2018,
    eq. 2 with the squared-l2-output gradient of sec. 4.1).

    F is the model's output before any softmax; for a sequence model the squared norm is averaged
    over positions so the importance does not grow with the context length.
    """

    def squared_output_norm(forward: Forward, x: torch.Tensor) -> torch.Tensor:
        out = forward(x).float()
        return out.pow(2).sum(-1).mean()

    return mean_per_sample_gradient_statistic(
        model, squared_output_norm, [inputs], torch.abs, None, chunk
    )


def path_integral_importance(
    omega: torch.Tensor, delta: torch.Tensor, damping: float
) -> torch.Tensor:
    """SI's per-task importance Omega = max(0, omega / (Delta^2 + xi)) (Zenke et al. 2017, eq. 5).

    ``omega`` is the path integral sum_t -g_t * (theta_{t+1} - theta_t) over the task's steps
    (eq. 3), ``delta`` the parameter's total change over the task. Adam's preconditioning and
    momentum can make a path integral negative; it is clamped at 0 so the penalty stays a convex
    quadratic that never rewards moving away from the anchor.
    """
    return (omega / (delta.square() + damping)).clamp_min(0.0)


def sequence_log_likelihood(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | x) of one sequence under a causal LM: the sum of its next-token log-probs."""
    logp = F.log_softmax(forward(x).float(), dim=-1)
    return logp.gather(-1, y.unsqueeze(-1)).sum()


# ------------------------------------------------------------------ shared by data-driven hooks
def draw_seed(ctx: TrainContext) -> int:
    """A seed from the run's generator (saved and restored with the run, so resumes repeat it)."""
    gen = ctx.generator
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def draw_windows(ctx: TrainContext, domain_index: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (x, y) training windows of one domain, on the run's device."""
    from forgetlab.data import sample_windows

    tokens = ctx.stream[ctx.stream.domains[domain_index]].train
    rng = np.random.default_rng(draw_seed(ctx))
    x, y = sample_windows(tokens, rng, n, block_size(ctx))
    return x.to(ctx.device), y.to(ctx.device)


def block_size(ctx: TrainContext) -> int:
    return int(ctx.model.config.block_size)  # type: ignore[union-attr]


def flops_per_token(ctx: TrainContext, kind: str) -> float:
    """The model accountant's FLOPs per token ("forward" = 2N, "train" = 6N, plus attention)."""
    cfg = ctx.model.config  # type: ignore[union-attr]
    return float(model_flops_per_token(cfg, cfg.block_size)[kind])
