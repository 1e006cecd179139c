"""The report's curves: measured points only (no fabricated zeros), stage boundaries, per-domain
validation points, and R heatmaps with their numbers."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from synthetic_experiment import write_experiment

from forgetlab.analysis import plots
from forgetlab.analysis.load import load_experiment


def test_a_step_that_trained_on_no_token_is_missing_not_zero():
    curve = pd.DataFrame(
        {
            "step": [10, 20, 25, 30],
            "train_loss": [7.3, 0.0, np.nan, 6.4],  # 20: an old record's gated-out step; 25: eval
            "grad_norm": [2.4, 0.0, np.nan, 0.7],
        }
    )
    kept = plots.trained_loss(curve)
    assert kept["step"].tolist() == [10, 30] and kept["train_loss"].min() > 0
    measured_zero_gradient = curve.assign(train_loss=[7.3, 5.0, np.nan, 6.4])
    assert plots.trained_loss(measured_zero_gradient)["step"].tolist() == [10, 20, 30]


@pytest.fixture
def experiment(tmp_path):
    return load_experiment(write_experiment(tmp_path / "exp", seeds=1, fail_one=False))


def test_learning_curves_leave_out_unmeasured_steps_and_mark_every_stage(experiment, tmp_path):
    run = experiment.meta["runs"][0]
    path = experiment.root / run["dir"] / "curves.parquet"
    curve = pd.read_parquet(path)
    curve["grad_norm"] = 1.0
    curve.loc[curve["step"] == 50, ["train_loss", "grad_norm"]] = 0.0  # a step the gate skipped
    curve.to_parquet(path)
    frame = experiment.finished()
    order, axis, lines, used = plots.train_curves(experiment, frame)
    assert order == ["code", "math", "medical"] and len(used) == 8  # the "fwd" runs
    assert axis.in_steps and axis.sps == 40
    group = lines[run["group"]]
    assert 50 not in group.index and group.min() > 2.5  # the other steps are all there
    assert len(group) == 119

    drawn = plots.plot_learning_curves(experiment, frame, tmp_path, "lc")
    assert (
        drawn is not None
        and drawn[1] == "code → math → medical (8 of 16 runs: those in this order)"
    )
    svg = (tmp_path / "lc.svg").read_text()
    assert all(f">{d}<" in svg for d in order)  # each stage labelled with its domain


def test_groups_with_different_steps_per_stage_share_an_axis_in_stages(experiment):
    rid = experiment.meta["runs"][0]["run_id"]
    experiment.records[rid]["config"]["train"]["steps_per_stage"] = 20
    axis = plots.CurveAxis(experiment, list(experiment.records))
    assert not axis.in_steps and axis.label == "stage (fraction done)"
    assert axis.x(pd.Series([10, 40]), experiment.records[rid]).tolist() == [0.5, 2.0]


def test_validation_points_hold_every_domain_at_each_stage_end_and_in_stage_evaluations(experiment):
    rid = experiment.meta["runs"][0]["run_id"]
    record = experiment.records[rid]
    curve = pd.DataFrame(
        {
            "step": [20, 40, 60],
            "stage": [0, 0, 1],
            "domain": ["code", "code", None],
            "val_loss": [4.0, 99.0, 4.5],  # step 40 is a stage end: R's value wins
        }
    )
    points = plots.validation_points(record, curve).set_index(["domain", "step"])["val_loss"]
    r = record["R"]["loss"]
    assert points[("code", 0)] == r[0][0] and points[("medical", 120)] == r[3][2]
    assert points[("code", 40)] == r[1][0] and points[("code", 20)] == 4.0
    assert points[("math", 60)] == 4.5  # the domain of stage 1, from the run's order
    assert len(points) == 4 * 3 + 2


def test_domain_curves_draw_one_panel_per_domain(experiment, tmp_path):
    drawn = plots.plot_domain_curves(experiment, experiment.finished(), tmp_path, "dc")
    assert drawn is not None
    svg = (tmp_path / "dc.svg").read_text()
    for k, d in enumerate(["code", "math", "medical"]):
        assert f"{d} (trained in stage {k + 1}, shaded)" in svg


def test_r_heatmap_cells_carry_their_values(synthetic_report):
    an = json.loads(synthetic_report["analysis"].read_text())
    assert an["budgets"]
    svg = (synthetic_report["plots"] / "r_matrices.svg").read_text()
    cells = re.findall(r">(\d+\.\d\d)<", svg)
    assert len(cells) == 8 * 4 * 3  # 8 groups, 4 rows x 3 domains each
    exp = load_experiment(synthetic_report["analysis"].parent)
    ids = list(exp.finished().query("group == 'T0W0R0'")["run_id"])
    mean, _ = plots.mean_r(exp, ids)
    assert cells[: mean.size] == [f"{v:.2f}" for v in mean.ravel()]
