"""Sampling sequences from the model (temperature, top-k) for generative replay and sleep.

Deep generative replay (Shin et al. 2017) rehearses on samples of a generator instead of stored
data; a language model is its own generator, so at a stage end the current model writes the
pseudo-samples with its KV-cache sampler; :func:`generation_flops` counts what that computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from forgetlab.data import sample_windows
from forgetlab.mechanisms.base import TrainContext
from forgetlab.models import model_flops_per_token


class GenerationKnobs(BaseModel):
    """How pseudo-samples are drawn (shared by ``generative_replay`` and ``sleep``)."""

    temperature: float = Field(1.0, ge=0, description="softmax temperature; 0 = greedy")
    top_k: int | None = Field(50, ge=1, description="sample among the k likeliest; None = all")
    prompt: Literal["domain", "bos"] = Field(
        "domain", description="domain: a real prefix of the domain; bos: the end-of-text token"
    )
    prompt_tokens: int = Field(8, ge=1, description="length of a domain prompt")
    gen_batch_size: int = Field(32, ge=1, description="sequences generated per forward pass")


def generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> torch.Tensor:
    """(B, P) prompt ids -> (B, P + max_new_tokens) ids through the model's own KV-cache sampler
    (``GPT.generate``: softmax(logits / temperature) over the ``top_k`` likeliest, argmax at
    temperature 0), under the run's autocast."""
    with autocast():
        return model.generate(prompt, max_new_tokens, temperature, top_k, generator)


def generation_flops(model_cfg: Any, n_seqs: int, prompt_len: int, new_tokens: int) -> float:
    """Forward FLOPs of :func:`generate` with ``GPT.generate``'s KV cache: the first step feeds
    the prompt, each later step one token attending over the context so far; when the context
    reaches ``block_size`` the cache restarts and the cropped window is fed again. A token fed at
    context length L costs the forward share of 6N + 12 L H Q L-per-token (nanoGPT's estimate)."""
    block = model_cfg.block_size
    cached, length, total = 0, prompt_len, 0.0
    for _ in range(new_tokens):
        if cached == 0 or cached >= block:
            fed = min(length, block)
            context = cached = fed
        else:
            fed, context = length - cached, length
            cached = length
        total += fed * model_flops_per_token(model_cfg, context)["forward"]
        length += 1
    return float(total * n_seqs)


def make_prompts(
    ctx: TrainContext, domain: int, n: int, knobs: GenerationKnobs
) -> torch.Tensor:
    """(n, P) prompts: real prefixes of ``domain``'s train split, or the end-of-text token."""
    if knobs.prompt == "bos":
        eot = ctx.stream.tokenizer.eot_id
        return torch.full((n, 1), eot, dtype=torch.long, device=ctx.device)
    seed = int(torch.randint(2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
    tokens = ctx.stream[ctx.stream.domains[domain]].train
    x, _ = sample_windows(tokens, np.random.default_rng(seed), n, knobs.prompt_tokens)
    return x.to(ctx.device)


def generate_sequences(
    ctx: TrainContext, domain: int, n: int, knobs: GenerationKnobs
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``n`` pseudo-samples of ``domain`` as (x, y) windows of ``block_size`` tokens (y is x shifted
    by one), and the FLOPs spent generating them."""
    model_cfg = ctx.model.config
    block = model_cfg.block_size
    prompts = make_prompts(ctx, domain, n, knobs)
    p = min(prompts.shape[1], block)
    prompts = prompts[:, :p]
    new = block + 1 - p
    seqs = [
        generate(
            ctx.model,
            prompts[i : i + knobs.gen_batch_size],
            new,
            knobs.temperature,
            knobs.top_k,
            ctx.generator,
            ctx.autocast,
        )
        for i in range(0, n, knobs.gen_batch_size)
    ]
    seq = torch.cat(seqs) if seqs else prompts.new_zeros((0, block + 1))
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous(), generation_flops(model_cfg, n, p, new)
