"""Fixtures of the analysis tests: the synthetic experiment and a real micro study, each with its
report written once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synthetic_experiment import write_experiment

from micro_run import runs_in_this_process


@pytest.fixture(scope="session")
def synthetic_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic experiment with its report written once (shared by the report tests)."""
    from forgetlab.analysis.report import write_report

    root = write_experiment(tmp_path_factory.mktemp("exp"))
    return write_report(root)


def micro_study(base: dict[str, Any]) -> dict[str, Any]:
    """A 2x2 study trained for real: selective write (W, a gate that writes nothing at some steps)
    by replay (R), 2 seeds, 3 domains, in-stage evaluation; about 10 s on one core."""
    base = {**base, "train": {**base["train"], "eval_every": 2}}
    return {
        "name": "micro-report",
        "description": "Whether gating writes and replaying real samples change forgetting.",
        "base": base,
        "design": {"kind": "full_factorial", "reference": "W0_R0"},
        "factors": {
            "W": {
                "W0": {},
                "W1": {
                    "mechanisms": [
                        {
                            "name": "selective_write",
                            "granularity": "sequence",
                            "write_fraction": 0.5,
                        }
                    ]
                },
            },
            "R": {"R0": {}, "R1": {"mechanisms": [{"name": "replay", "capacity": 16}]}},
        },
        "seeds": [0, 1],
        "preregistration": {
            "primary_metric": "loss.average_forgetting",
            "alpha": 0.05,
            "correction": "holm",
            "hypotheses": [
                {
                    "id": "H1",
                    "statement": "Replay lowers forgetting",
                    "criterion": "af.W0_R1 < af.W0_R0",
                },
                {
                    "id": "H2",
                    "statement": "R is a significant main effect",
                    "criterion": "p.R < 0.05",
                },
            ],
        },
    }


@pytest.fixture(scope="session")
def micro_study_report(
    micro_base: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The micro study run through the real runner and trainer, and its report."""
    from forgetlab.analysis.report import write_report
    from forgetlab.experiments import run_experiment

    out = tmp_path_factory.mktemp("micro-study") / "exp"
    spec = micro_study(micro_base(domains=3, steps=4))
    with runs_in_this_process():  # what the report shows, not how the runs were started
        run_experiment(spec, out, quiet=True, argv=["forgetlab", "run", "micro-report"])
    return write_report(out)
