"""A micro run through the real Trainer with given mechanisms (shared by the mechanism tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetlab.config import RunConfig, resolve_run_config
from forgetlab.train import Trainer


def micro_config(
    fixture_data: Any,
    mechanisms: list[dict[str, Any]],
    domains: int = 2,
    model: dict[str, Any] | None = None,
    **train: Any,
) -> RunConfig:
    raw = {
        "name": "micro-mechanism",
        "seed": 3,
        "model": model or {"preset": "micro"},
        "data": {
            "domains": fixture_data.domains[:domains],
            "tokenizer": fixture_data.tokenizer,
            "cache_dir": fixture_data.cache_dir,
            "val_batches": 1,
            "eval_batch_size": 8,
        },
        "train": {
            "steps_per_stage": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "lr": 3e-3,
            "precision": "fp32",
            "log_every": 2,
            **train,
        },
        "mechanisms": mechanisms,
    }
    return resolve_run_config(raw)


def run(fixture_data: Any, out: Path, mechanisms: list[dict[str, Any]], **kw: Any) -> dict:
    return Trainer(micro_config(fixture_data, mechanisms, **kw), out, progress=False).run()
