"""Micro runs on the fixture stream, built in one place: the config sections every test that trains
shares (the micro model, a few fixture domains, one or two validation batches, a few steps of four
sequences in fp32 on one thread), a resolved single-run config, a run through the real Trainer, and
a spec written as TOML for the CLI."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from forgetlab.api import toml_literal
from forgetlab.config import RunConfig, resolve_run_config

FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "corpus"
FIXTURE_VAL_FRACTION = 0.2


def fixture_sources(domains: list[str]) -> dict[str, dict[str, Any]]:
    """``data.sources`` of ``domains``: the shipped excerpts the fixture stream is prepared from,
    so that a command which prepares its domains finds them prepared (and rebuilds nothing)."""
    return {
        d: {"files": [str(FIXTURE_CORPUS / d / "*.jsonl")], "val_fraction": FIXTURE_VAL_FRACTION}
        for d in domains
    }


def micro_sections(
    fixture_data: Any,
    domains: int | list[str] = 2,
    steps: int = 4,
    *,
    model: dict[str, Any] | None = None,
    val_batches: int = 1,
    sources: bool = False,
    data: dict[str, Any] | None = None,
    **train: Any,
) -> dict[str, Any]:
    """``model``, ``data`` and ``train`` of a run that takes a second or two: the first
    ``domains`` fixture domains (or these names), ``steps`` steps per stage; ``data`` and
    ``train`` override or add keys; ``sources``: name the fixture's files as the domains'
    sources (for commands that prepare them)."""
    names = fixture_data.domains[:domains] if isinstance(domains, int) else list(domains)
    return {
        "model": dict(model) if model is not None else {"preset": "micro"},
        "data": {
            "domains": names,
            "tokenizer": fixture_data.tokenizer,
            "cache_dir": fixture_data.cache_dir,
            "val_batches": val_batches,
            "eval_batch_size": 8,
            **({"sources": fixture_sources(names)} if sources else {}),
            **(data or {}),
        },
        "train": {
            "steps_per_stage": steps,
            "batch_size": 4,
            "warmup_steps": 1,
            "precision": "fp32",
            "log_every": 2,
            "threads": 1,  # one thread per run: much faster than two on a busy 2-core machine
            **train,
        },
    }


def micro_config(
    fixture_data: Any,
    mechanisms: list[dict[str, Any]] | tuple = (),
    domains: int | list[str] = 2,
    *,
    name: str = "micro",
    seed: int = 3,
    lr: float = 3e-3,
    **sections: Any,
) -> RunConfig:
    """A resolved micro run with ``mechanisms``; ``sections`` as :func:`micro_sections` takes."""
    raw = micro_sections(fixture_data, domains, lr=lr, **sections)
    return resolve_run_config(
        {"name": name, "seed": seed, "mechanisms": list(mechanisms), **raw}
    )


def run(fixture_data: Any, out: Path, mechanisms: list[dict[str, Any]], **kw: Any) -> dict:
    """Train :func:`micro_config` into ``out``; its run.json record."""
    from forgetlab.train import Trainer

    return Trainer(micro_config(fixture_data, mechanisms, **kw), out, progress=False).run()


@contextmanager
def runs_in_this_process() -> Iterator[None]:
    """Within it, the local executor trains each run of a study in this process, one at a time,
    instead of in a worker process of its own: the same numbers (the trainer seeds every generator
    it draws from when it starts; tests/experiments/test_torture.py compares both ways) without an
    interpreter start and a torch import per run. For studies whose tests are about what the runs
    produced (results, reports), not about the worker processes (they write no worker log)."""
    import torch

    from forgetlab.experiments.executors import LocalExecutor
    from forgetlab.experiments.worker import run_one

    one_at_a_time = threading.Lock()  # the trainer seeds process-wide generators

    def in_process(self: LocalExecutor, task: Any, slot: int) -> dict[str, Any]:
        with one_at_a_time:
            return run_one(task.config, task.run_dir, self.threads, task.lock_wait)

    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LocalExecutor, "_subprocess", in_process)
            yield
    finally:
        torch.set_num_threads(threads)  # a run sets its train.threads process-wide


def write_toml(path: Path, spec: dict[str, Any]) -> Path:
    """``spec`` as a TOML file for the CLI: a ``[table]`` per nested dict (so a test may append
    another ``[data.sources.x]`` table), every other value as its literal."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def table(name: str, values: dict[str, Any]) -> None:
        if name:
            lines.append(f"[{name}]")
        for k, v in values.items():
            if not isinstance(v, dict):
                lines.append(f"{key(k)} = {toml_literal(v, k)}")
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{name}.{key(k)}" if name else key(k), v)

    table("", spec)
    path.write_text("\n".join(lines) + "\n")
    return path
