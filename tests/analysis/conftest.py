"""Fixtures of the analysis tests: the synthetic experiment with its report, written once."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_experiment import write_experiment


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic experiment with its report written once (shared by the report tests)."""
    from forgetlab.analysis.report import write_report

    root = write_experiment(tmp_path_factory.mktemp("exp"))
    return write_report(root)
