"""Micro runs on the fixture stream, built in one place: the config sections every test that trains
shares (the micro model, a few fixture domains, one or two validation batches, a few steps of four
sequences in fp32 on one thread), a resolved single-run config, a run through the real Trainer, and
a spec written as TOML for the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    domains: int = 2,
    steps: int = 4,
    *,
    model: dict[str, Any] | None = None,
    val_batches: int = 1,
    sources: bool = False,
    **train: Any,
) -> dict[str, Any]:
    """``model``, ``data`` and ``train`` of a run that takes a second or two: the first
    ``domains`` fixture domains, ``steps`` steps per stage; ``train`` overrides or adds keys;
    ``sources``: name the fixture's files as the domains' sources (for commands that prepare)."""
    names = fixture_data.domains[:domains]
    return {
        "model": dict(model) if model is not None else {"preset": "micro"},
        "data": {
            "domains": names,
            "tokenizer": fixture_data.tokenizer,
            "cache_dir": fixture_data.cache_dir,
            "val_batches": val_batches,
            "eval_batch_size": 8,
            **({"sources": fixture_sources(names)} if sources else {}),
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
    domains: int = 2,
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
