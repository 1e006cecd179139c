"""The plan's arithmetic: the T/W/R ablation's FLOPs / GPU-hours / cost, and tokens per run."""

from __future__ import annotations

import pytest

from forgetlab.experiments import build_plan, gpu_cost, load_spec, six_nd
from forgetlab.experiments.spec import GPU, Plan


def test_ablation_cost_arithmetic_comes_out():
    flops = six_nd(124e6, 1e9)
    assert flops == pytest.approx(7.44e17)
    a100 = Plan().gpus[0]  # the default reference GPU is the ablation's
    assert a100.effective_flops == pytest.approx(1.5e14)
    one = gpu_cost(flops, a100)
    assert one["seconds"] == pytest.approx(4960.0)
    total = gpu_cost(24 * flops, a100)
    assert total["gpu_hours"] == pytest.approx(33.07, abs=0.005)
    assert total["cost"] == pytest.approx(66.13, abs=0.01)  # "under $70"


def test_cost_scales_with_utilisation_and_price():
    half = GPU(name="X", peak_flops=2e14, utilisation=0.5, price_per_hour=4.0)
    res = gpu_cost(3.6e17, half)
    assert res["seconds"] == pytest.approx(3600.0) and res["cost"] == pytest.approx(4.0)


def test_full_scale_plan_reproduces_the_ablation_costing(cl_raw):
    # the ablation's own count: 8 groups x 3 seeds, one order, one budget = 24 runs
    cl_raw["scales"]["full"].update(
        budgets=["same_shape"], orders={"forward": ["code", "math", "medical", "legal", "dialogue"]}
    )
    spec, scale = load_spec(cl_raw, "full")
    plan = build_plan(spec, scale, bench=False)
    assert plan["n_runs"] == plan["n_distinct_runs"] == 24
    run = plan["runs"][0]
    assert run["train_tokens"] == pytest.approx(1e9, rel=0.002)  # "1B tokens"
    assert run["parameters"] == pytest.approx(124e6, rel=0.005)  # "124M"
    assert run["flops_6nd"] == pytest.approx(7.44e17, rel=0.005)
    # the accountant adds attention (12 L H Q T per token) on top of 6N
    assert run["flops_training"] > run["flops_6nd"]
    a100 = plan["gpus"][0]
    assert a100["seconds_per_run_6nd"] == pytest.approx(4960, rel=0.005)
    assert a100["gpu_hours_6nd"] == pytest.approx(33.07, rel=0.005)
    assert a100["gpu_hours"] > a100["gpu_hours_6nd"]
