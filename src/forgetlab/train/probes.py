"""Probe domains: what the model knew before the stream, evaluated beside it and never trained on.

``data.probes`` names domains (``books``, ``mmlu``, a user source) that the trainer evaluates
with the stream's domains, on fixed validation windows, before stage 1 and after every stage:
each kind of score gets a (T+1) x P probe matrix, rows as R's, one column per probe. Probe
forgetting (row T minus row 0, :mod:`forgetlab.analysis.registry`) is then how much general
ability the stream cost, the measure continual pre-training work on language models reports
beside the stream's own forgetting (e.g. Gupta et al. 2023, "Continual Pre-Training of Large
Language Models: How to (re)warm your model?").

Why a probe cannot be trained on: its shards are opened as their own
:class:`~forgetlab.data.Stream`, which the training context never holds. The trainer's batches,
every mechanism's memory (replay, sleep, generative replay) and any mixture of domains draw from
``ctx.stream``, the stream's domains only; config validation refuses a probe that is also a stream
domain. A probe is evaluated as the model stands (for task-routed mechanisms: like a domain not
yet trained, it has no task of its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from forgetlab.analysis.metrics import KINDS
from forgetlab.analysis.registry import probe_metrics
from forgetlab.config import DataConfig
from forgetlab.data import fixed_windows, open_stream
from forgetlab.train.evaluate import EvalSet, make_eval_set, unigram_baseline


@dataclass
class Probes:
    """The probe domains of one run: their evaluation windows, unigram baselines and R rows."""

    names: list[str]
    eval_sets: list[EvalSet]
    unigram: dict[str, list[float | None]]  # kind -> one per probe; None: no train split
    R: dict[str, list[list[float]]] = field(default_factory=lambda: {k: [] for k in KINDS})

    @classmethod
    def open(
        cls,
        data: DataConfig,
        token_bytes: np.ndarray,
        n_windows: int,
        block_size: int,
        vocab_size: int,
        device: torch.device,
    ) -> Probes:
        """Open ``data.probes`` (none: an empty set) with the same windows as the stream's
        domains. The unigram baseline needs a train split: an evaluation-only probe (mmlu) has
        None there."""
        if not data.probes:
            return cls([], [], {k: [] for k in KINDS})
        assert data.tokenizer is not None, "resolve_run_config fills the tokenizer"
        probes = open_stream(data.probes, data.tokenizer, data.cache_dir)
        sets, unigram = [], {k: [] for k in KINDS}
        for name in probes.domains:
            dom = probes[name]
            es = make_eval_set(*fixed_windows(dom.val, n_windows, block_size), token_bytes, device)
            sets.append(es)
            base = unigram_baseline(dom.unigram_counts(), es, vocab_size) if len(dom.train) else {}
            for k in KINDS:
                unigram[k].append(base.get(k))
        return cls(list(probes.domains), sets, unigram)

    def __bool__(self) -> bool:
        return bool(self.names)

    def state_dict(self) -> dict[str, list[list[float]]]:
        """What a checkpoint keeps: the probe matrices so far."""
        return self.R

    def load_state_dict(self, state: dict[str, list[list[float]]]) -> None:
        self.R = state

    def add_row(self, row: dict[str, list[float]]) -> None:
        """Append one evaluation (every kind, one value per probe) as the next R row."""
        for k in KINDS:
            self.R[k].append(row[k])

    def record(self, n_stages: int) -> dict[str, Any]:
        """run.json's ``probes`` section: the probe matrices so far, baselines, evaluated tokens,
        and the probe metrics once all ``n_stages`` + 1 rows exist."""
        complete = len(self.R["loss"]) == n_stages + 1 and n_stages >= 1
        return {
            "domains": self.names,
            "R": self.R,
            "unigram": self.unigram,
            "eval_tokens": [es.n_tokens for es in self.eval_sets],
            "metrics": (
                {k: probe_metrics(self.R[k], k, self.names) for k in KINDS} if complete else {}
            ),
        }
