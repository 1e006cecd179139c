"""Helpers for the experiments tests: the ready cl_mechanisms spec as a raw dict (``micro_base``,
the micro-sized study base, is shared from tests/conftest.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from forgetlab.config import load_toml
from forgetlab.specs import shipped_spec

CL_MECHANISMS = shipped_spec("cl_mechanisms")


@pytest.fixture
def cl_raw() -> dict[str, Any]:
    return copy.deepcopy(load_toml(CL_MECHANISMS))
