"""MAS through the Trainer: importance from per-sample output gradients anchors the next domain.

The hand case of the importance itself is in test_importance.py."""

import pandas as pd
import pytest

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import build_mechanisms
from micro_run import run


def test_mas_penalises_the_second_domain(fixture_data, tmp_path):
    mech = [{"name": "mas", "lam": 1.0, "samples": 4, "chunk": 4}]
    record = run(fixture_data, tmp_path / "r", mech, steps_per_stage=3, log_every=1)
    curves = pd.read_parquet(tmp_path / "r" / "curves.parquet")
    second = curves[curves["stage"] == 1]["mas/penalty"].to_list()
    assert second[0] == 0.0 and second[-1] > 0.0
    assert record["flops"]["total"]["mechanisms"] >= 4 * 64 * 6 * 2 * 64 * 64


def test_mas_needs_lambda():
    with pytest.raises(ConfigError, match="lam"):
        build_mechanisms([MechanismConfig(name="mas", samples=4)])
