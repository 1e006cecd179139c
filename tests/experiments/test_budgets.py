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
        "base": micro_base(domains=2, steps=REFERENCE_STEPS),
        "design": {"kind": "groups", "reference": "dense"},
        "groups": {
            "dense": {},
            "deep": {"model": {"n_layer": 3}},  # more FLOPs per token
            "sleep": {  # periodic extra steps: 2 every 10 stream steps (+20%), known ahead
                "mechanisms": [{"name": "sleep", "every": 10, "steps": 2, "capacity": 32}]
            },
            "distil": {  # a teacher forward inside every step: only running it tells
                "mechanisms": [{"name": "lwf", "alpha": 0.5}]
            },
        },
        "budgets": ["same_shape", "matched_flops"],
    }
    return load_spec(raw)[0]


def test_matched_flops_runs_land_within_2_percent_of_the_reference(matched_spec, tmp_path):
    configs, reference = same_shape_configs(matched_spec)
    window = calibration_window(configs, reference, None)
    fns, found, _ = group_flops(configs, "auto", window)
    assert found["deep"]["source"] == "analytic"
    assert found["sleep"]["source"] == "mechanism estimate_flops"
    assert found["distil"]["source"] == "calibrated"
    for group in ("sleep", "distil"):  # unmatched: far off
        assert fns[group](REFERENCE_STEPS) > 1.1 * fns["dense"](REFERENCE_STEPS)
    steps = match_steps(fns, reference, REFERENCE_STEPS, 0.02)
    assert steps["dense"] == REFERENCE_STEPS
    assert all(steps[g] < REFERENCE_STEPS for g in ("deep", "sleep", "distil"))

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
    assert calls == [7] and fns["distil"](10) == pytest.approx(3 * (1e10 + 5e8))
    monkeypatch.setattr(budgets, "calibrate", lambda cfg, steps: pytest.fail("recalibrated"))
    again, _, _ = group_flops(configs, "auto", 7, cache)
    assert again["distil"](10) == fns["distil"](10)


@pytest.mark.parametrize("steps", [7, 10])
def test_analytic_mechanism_flops_equal_what_the_run_counts(micro_base, tmp_path, steps):
    """selective_write's scoring passes, sleep's phases (counted across stages: 7 steps x 3
    stages / every 4 = 5 phases) and replay's shape-keeping mix, predicted before the run, equal
    the accountant's training total of the real run exactly."""
    from forgetlab.config import resolve_run_config

    base = micro_base(steps=steps)
    base["mechanisms"] = [
        {"name": "replay", "capacity": 16, "ratio": "3:1"},
        {"name": "selective_write", "granularity": "sequence", "write_fraction": 0.5},
        {"name": "sleep", "every": 4, "steps": 2, "capacity": 16, "batch_size": 3},
    ]
    cfg = resolve_run_config(base)
    fn, how = budgets.flops_function(cfg, "auto", steps)
    assert how == {"source": "mechanism estimate_flops"}
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert fn(steps) == pytest.approx(record["flops"]["total"]["training_total"], rel=1e-12)


def test_an_unreachable_match_is_refused_with_the_closest_miss():
    with pytest.raises(ConfigError, match=r"within 2.0% \(best 1 steps per stage is 50.0%"):
        solve_steps(lambda s: 1500.0 * s, 1000.0, 0.02, "'coarse'")
    assert solve_steps(lambda s: 10.0 * s + 5.0, 1004.0, 0.02, "'fine'") == 100
