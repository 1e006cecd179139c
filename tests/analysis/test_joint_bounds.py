"""The share of the naive-to-joint gap a group closes, on hand-made numbers."""

import math
from dataclasses import asdict

import pandas as pd
import pytest

from forgetlab.analysis.doc import Doc
from forgetlab.analysis.joint import (
    budget_bounds,
    gap_closed,
    joint_groups,
    joint_weighting,
    place_groups,
    stage_labels,
)
from forgetlab.analysis.report import joint_bounds_block


def test_the_share_of_the_gap_on_a_hand_made_example():
    # naive ends at 4.0 nats, joint training at 3.0: the gap is 1.0 nat
    assert gap_closed(4.0, 3.5, 3.0) == 0.5  # half-way
    assert gap_closed(4.0, 4.0, 3.0) == 0.0  # naive itself
    assert gap_closed(4.0, 3.0, 3.0) == 1.0  # as good as joint
    assert gap_closed(4.0, 4.2, 3.0) == pytest.approx(-0.2)  # worse than naive
    assert gap_closed(4.0, 2.8, 3.0) == pytest.approx(1.2)  # better than joint
    assert gap_closed(5.0, 4.5, 3.0) == 0.25  # gap 2.0, closed by 0.5


def test_no_share_when_joint_is_not_below_naive_or_a_value_is_missing():
    assert gap_closed(3.0, 2.5, 3.0) is None  # naive == joint: a zero gap
    assert gap_closed(3.0, 2.5, 3.2) is None  # joint worse than naive: no gap to close
    assert gap_closed(4.0, math.nan, 3.0) is None
    bounds = place_groups({"naive": 3.0, "replay": 2.5, "joint": 3.0}, "naive", "joint")
    assert [p.share for p in bounds.placements] == [None, None, None]
    assert bounds.note is not None and "no gap to close" in bounds.note


def test_every_group_is_placed_between_naive_and_joint():
    values = {"naive": 4.0, "replay": 3.25, "ewc": 4.5, "joint": 3.0}
    bounds = place_groups(values, "naive", "joint")
    assert (bounds.naive, bounds.joint, bounds.note) == (4.0, 3.0, None)
    assert {p.group: p.share for p in bounds.placements} == {
        "naive": 0.0, "replay": 0.75, "ewc": -0.5, "joint": 1.0
    }
    assert asdict(bounds)["placements"][1] == {"group": "replay", "value": 3.25, "share": 0.75}


def _runs(groups: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"run_id": f"{g}-{i}", "group": g, "seed": i, "loss.final_mean": v}
        for g, vs in groups.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def _records(frame: pd.DataFrame, joint: dict[str, str]) -> dict[str, dict]:
    return {
        r: {"config": {"train": {"joint": joint.get(g), "steps_per_stage": 10}}}
        for r, g in zip(frame["run_id"], frame["group"], strict=True)
    }


def test_a_budget_finds_its_joint_groups_and_places_group_means():
    frame = _runs({"naive": [4.1, 3.9], "replay": [3.6, 3.4], "joint": [3.1, 2.9],
                   "joint_u": [3.5, 3.5]})
    records = _records(frame, {"joint": "proportional", "joint_u": "uniform"})
    assert joint_groups(frame, records) == ["joint", "joint_u"]
    prop, uni = budget_bounds(frame, records, "naive")
    assert (prop.joint_group, uni.joint_group) == ("joint", "joint_u")
    assert {p.group: p.share for p in prop.placements}["replay"] == pytest.approx(0.5)
    assert {p.group: p.share for p in uni.placements}["replay"] == pytest.approx(1.0)


def test_no_placement_without_a_joint_group_or_a_usable_reference():
    frame = _runs({"naive": [4.0], "replay": [3.5], "joint": [3.0]})
    assert budget_bounds(frame, _records(frame, {}), "naive") == []  # no joint group
    records = _records(frame, {"joint": "proportional"})
    assert budget_bounds(frame, records, None) == []
    assert budget_bounds(frame, records, "joint") == []  # the reference is the joint group
    assert budget_bounds(frame, records, "gone") == []  # the reference has no finished run
    assert budget_bounds(frame.drop(columns="loss.final_mean"), records, "naive") == []


def test_a_joint_runs_stages_are_labelled_as_points_of_one_pass():
    assert stage_labels(["code", "math"], None) == ["code", "math"]
    assert stage_labels(["code", "math"], "uniform") == ["joint 1/2", "joint 2/2"]
    assert joint_weighting({"config": {"train": {"joint": "uniform"}}}) == "uniform"
    assert joint_weighting({"config": {"train": {}}}) is None and joint_weighting({}) is None


def test_the_report_section_shows_each_groups_share_or_why_there_is_none(tmp_path):
    values = {"naive": 4.0, "replay": 3.25, "joint": 3.0}
    doc = Doc("t")
    joint_bounds_block(doc, place_groups(values, "naive", "joint"))
    text = doc.markdown(tmp_path)
    assert "Between naive fine-tuning and joint training (`joint`)" in text
    assert "| replay | 3.25 | 75% |" in text and "| joint | 3 | 100% |" in text
    doc = Doc("t")
    joint_bounds_block(doc, place_groups({**values, "joint": 4.5}, "naive", "joint"))
    text = doc.markdown(tmp_path)
    assert "no gap to close" in text and "| replay | 3.25 | n/a |" in text
