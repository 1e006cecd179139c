"""Helpers for the experiments tests: micro-sized study specs over the shared fixture stream."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from forgetlab.config import load_toml
from forgetlab.specs import shipped_spec

CL_MECHANISMS = shipped_spec("cl_mechanisms")


@pytest.fixture(scope="session")
def micro_base(fixture_data: Any) -> Callable[..., dict[str, Any]]:
    """A factory of base configs whose runs take a second or two on the fixture stream."""
    return lambda domains=3, steps=6: _micro_base(fixture_data, domains, steps)


def _micro_base(fixture_data: Any, domains: int, steps: int) -> dict[str, Any]:
    return {
        "model": {"preset": "micro"},
        "data": {
            "domains": fixture_data.domains[:domains],
            "tokenizer": fixture_data.tokenizer,
            "cache_dir": fixture_data.cache_dir,
            "val_batches": 1,
            "eval_batch_size": 8,
        },
        "train": {
            "steps_per_stage": steps,
            "batch_size": 4,
            "warmup_steps": 1,
            "precision": "fp32",
            "log_every": 2,
            "threads": 1,  # one thread per run: much faster than two on a busy 2-core machine
        },
    }


@pytest.fixture
def cl_raw() -> dict[str, Any]:
    return copy.deepcopy(load_toml(CL_MECHANISMS))
