"""Helpers for the experiments tests: the ready cl_mechanisms spec as a raw dict, and a study of
two data-parallel ranks per run, run once by the local executor for every executor to equal
(``micro_base``, the micro-sized study base, is shared from tests/conftest.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forgetlab.config import load_toml
from forgetlab.experiments import run_experiment
from forgetlab.specs import shipped_spec

CL_MECHANISMS = shipped_spec("cl_mechanisms")


@pytest.fixture
def cl_raw() -> dict[str, Any]:
    return copy.deepcopy(load_toml(CL_MECHANISMS))


@pytest.fixture(scope="session")
def ddp_study(micro_base: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One run of two data-parallel ranks (gloo on the CPU), two stages of three steps."""
    return {
        "name": "ddp",
        "base": micro_base(domains=2, steps=3),
        "factors": {"LR": {"lo": {}}},
        "devices_per_run": 2,
    }


@pytest.fixture(scope="session")
def ddp_local(ddp_study: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study directory of ``ddp_study`` run by the local executor (its worker process is
    torchrun's launcher): the numbers the cluster executors must give too."""
    out = tmp_path_factory.mktemp("ddp") / "exp"
    summary = run_experiment(ddp_study, out, workers=1, quiet=True)
    assert summary["finished"] == 1 and summary["failed"] == [], summary
    return out
