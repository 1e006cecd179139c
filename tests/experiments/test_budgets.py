"""matched_flops: real runs of every group land within 2% of the reference's training FLOPs."""

from __future__ import annotations

import pytest

from forgetlab.config import ConfigError
from forgetlab.experiments import budgets, expand, load_spec
from forgetlab.experiments.budgets import calibration_window, group_flops, match_steps, solve_steps
from forgetlab.experiments.design import same_shape_configs
from forgetlab.train import Trainer

REFERENCE_STEPS = 60


@pytest.fixture
def matched_spec(micro_base):
    raw = {
        "name": "match",
        "base": micro_base(steps=REFERENCE_STEPS),
        "design": {"kind": "groups", "reference": "dense"},
        "groups": {
            "dense": {},
            "deep": {"model": {"n_layer": 3}},  # more FLOPs per token
            "sleep": {  # periodic extra steps: 2 every 10 stream steps (+20%)
                "mechanisms": [{"name": "sleep", "every": 10, "steps": 2, "capacity": 32}]
            },
        },
        "budgets": ["same_shape", "matched_flops"],
    }
    return load_spec(raw)[0]


def test_matched_flops_runs_land_within_2_percent_of_the_reference(matched_spec, tmp_path):
    configs, reference = same_shape_configs(matched_spec)
    window = calibration_window(configs, reference, None)
    fns, found, _ = group_flops(configs, "auto", window)
    assert found["deep"]["source"] == "analytic" and found["sleep"]["source"] == "calibrated"
    assert fns["sleep"](REFERENCE_STEPS) > 1.1 * fns["dense"](REFERENCE_STEPS)  # unmatched: far off
    steps = match_steps(fns, reference, REFERENCE_STEPS, 0.02)
    assert steps["dense"] == REFERENCE_STEPS
    assert steps["deep"] < REFERENCE_STEPS and steps["sleep"] < REFERENCE_STEPS

    measured = {}
    for run in expand(matched_spec, steps):
        if run.budget == "matched_flops":
            record = Trainer(run.config, tmp_path / run.run_id, progress=False).run()
            measured[run.group] = record["flops"]["total"]["training_total"]
            assert run.steps_per_stage == steps[run.group]
    target = measured["dense"]
    for group, total in measured.items():
        assert abs(total - target) / target < 0.02, (group, total, target)
        assert abs(fns[group](steps[group]) - total) / total < 0.01  # the prediction held


def test_calibrations_are_reused_from_the_cache(matched_spec, monkeypatch):
    configs, _ = same_shape_configs(matched_spec)
    fake = budgets.FlopsModel((1e9,), (5e8,), 3, "calibrated")
    calls = []
    monkeypatch.setattr(budgets, "calibrate", lambda cfg, steps: calls.append(steps) or fake)
    fns, _, cache = group_flops(configs, "auto", 7)
    assert calls == [7] and fns["sleep"](10) == pytest.approx(3 * (1e10 + 5e8))
    monkeypatch.setattr(budgets, "calibrate", lambda cfg, steps: pytest.fail("recalibrated"))
    again, _, _ = group_flops(configs, "auto", 7, cache)
    assert again["sleep"](10) == fns["sleep"](10)


def test_an_unreachable_match_is_refused_with_the_closest_miss():
    with pytest.raises(ConfigError, match=r"within 2.0% \(best 1 steps per stage is 50.0%"):
        solve_steps(lambda s: 1500.0 * s, 1000.0, 0.02, "'coarse'")
    assert solve_steps(lambda s: 10.0 * s + 5.0, 1004.0, 0.02, "'fine'") == 100
