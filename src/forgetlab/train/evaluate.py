"""Evaluation of a model on fixed validation windows: loss, bits per byte, accuracy, and the
unigram baseline that tells whether a model learned more than word frequencies.

Runs in inference mode with large batches: in small CPU runs evaluation otherwise costs a third of
the time (docs/sizing.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from forgetlab.data import fixed_windows

if TYPE_CHECKING:
    from forgetlab.config import TrainConfig
    from forgetlab.data import Stream
    from forgetlab.data.tokenizers import Tokenizer


@dataclass(frozen=True)
class EvalSet:
    """Fixed validation windows of one domain, on the device, with the UTF-8 byte count of the
    evaluated targets (for bits per byte, comparable across tokenizers)."""

    x: torch.Tensor
    y: torch.Tensor
    n_bytes: int

    @property
    def n_tokens(self) -> int:
        return int(self.y.numel())


def make_eval_set(
    x: torch.Tensor, y: torch.Tensor, token_bytes: np.ndarray, device: torch.device
) -> EvalSet:
    n_bytes = int(token_bytes[y.numpy()].sum())
    return EvalSet(x.to(device), y.to(device), max(n_bytes, 1))


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data: EvalSet,
    batch_size: int,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """Mean loss (nats/token), bits per byte and top-1 next-token accuracy on ``data``."""
    was_training = model.training
    model.eval()
    nats = 0.0
    correct = 0
    for i in range(0, data.x.shape[0], batch_size):
        x, y = data.x[i : i + batch_size], data.y[i : i + batch_size]
        with autocast():
            logits = model(x)
        logits = logits.float()
        nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    return {
        "loss": nats / data.n_tokens,
        "bpb": nats / math.log(2) / data.n_bytes,
        "accuracy": correct / data.n_tokens,
    }


def unigram_baseline(train_counts: np.ndarray, data: EvalSet, vocab_size: int) -> dict[str, float]:
    """A unigram model fitted on the domain's train tokens (add-one smoothing), scored on the same
    validation windows as the model: the loss a model reaches by learning word frequencies only."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    counts[: len(train_counts)] = train_counts[:vocab_size]
    logp = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    targets = data.y.cpu().numpy().ravel()
    nats = float(-logp[targets].sum())
    best = int(np.argmax(counts))
    return {
        "loss": nats / data.n_tokens,
        "bpb": nats / math.log(2) / data.n_bytes,
        "accuracy": float(np.mean(targets == best)),
    }


def domain_eval_sets(
    stream: Stream,
    token_bytes: np.ndarray,
    n_windows: int,
    block_size: int,
    vocab_size: int,
    device: torch.device,
) -> tuple[list[EvalSet], dict[str, dict[str, float]]]:
    """Fixed validation windows of every domain of ``stream``, and each domain's unigram
    baseline (by domain name); ``token_bytes`` is the tokenizer's UTF-8 length of each token."""
    sets: list[EvalSet] = []
    unigram: dict[str, dict[str, float]] = {}
    for name in stream.domains:
        dom = stream[name]
        x, y = fixed_windows(dom.val, n_windows, block_size)
        sets.append(make_eval_set(x, y, token_bytes, device))
        unigram[name] = unigram_baseline(dom.unigram_counts(), sets[-1], vocab_size)
    return sets, unigram


def generation_samples(
    model: Any,
    domains: Sequence[str],
    eval_sets: Sequence[EvalSet],
    tokenizer: Tokenizer,
    cfg: TrainConfig,
    seed: int,
    autocast: Callable[[], Any],
    device: torch.device | str,
) -> list[dict[str, Any]]:
    """Continuations of real validation prompts, to read what the final model writes.

    Each prompt is the first quarter of a fixed validation window of its domain; sampling
    draws from a generator on ``device`` seeded by ``seed``, so the samples are reproducible.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt_len = max(1, model.config.block_size // 4)
    out = []
    for name, es in zip(domains, eval_sets, strict=True):
        rows = torch.linspace(0, es.x.shape[0] - 1, cfg.samples).long()
        prompts = es.x[rows, :prompt_len]
        with torch.inference_mode(), autocast():
            seqs = model.generate(prompts, cfg.sample_tokens, cfg.sample_temperature, 50, gen)
        for p, seq in zip(prompts.tolist(), seqs[:, prompt_len:].tolist(), strict=True):
            text = {"prompt": tokenizer.decode(p), "completion": tokenizer.decode(seq)}
            out.append({"domain": name, **text})
    return out
