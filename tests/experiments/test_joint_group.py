"""A joint-training group in a study spec: its syntax, its budget and what it refuses."""

from __future__ import annotations

import pandas as pd
import pytest
import tomllib

from forgetlab.analysis.document import load_analysis
from forgetlab.analysis.joint import gap_closed
from forgetlab.analysis.report import write_report
from forgetlab.config import ConfigError, RunConfig
from forgetlab.experiments import expand, load_spec, run_experiment
from forgetlab.specs import shipped_spec
from micro_run import runs_in_this_process


def _new_data_tokens(cfg: RunConfig) -> int:
    t = cfg.train
    return t.steps_per_stage * len(cfg.data.domains) * t.batch_size * t.grad_accum * (
        cfg.model.block_size
    )


def test_the_methods_specs_joint_group_reads_the_streams_domains_and_tokens():
    path = shipped_spec("methods")
    assert path is not None
    spec, _ = load_spec(tomllib.loads(path.read_text()))
    runs = {r.group: r.config for r in expand(spec)}
    joint, naive = runs["joint"], runs["naive"]
    assert (joint.train.joint, naive.train.joint) == ("proportional", None)
    assert joint.data.domains == naive.data.domains and joint.mechanisms == []
    assert _new_data_tokens(joint) == _new_data_tokens(naive)


def test_a_joint_group_given_a_mechanism_is_refused_by_group_name():
    raw = {
        "name": "toy",
        "base": {"model": {"preset": "micro"}, "data": {"tokenizer": "bpe-512"}},
        "design": {"kind": "groups", "reference": "naive"},
        "groups": {
            "naive": {},
            "joint": {
                "train": {"joint": "uniform", "rewarm": False},
                "mechanisms": [{"name": "replay"}],
            },
        },
    }
    spec, _ = load_spec(raw)
    with pytest.raises(ConfigError, match=r"group 'joint' .*mechanisms \['replay'\]"):
        expand(spec)


def test_a_study_with_a_joint_group_reports_the_share_of_the_gap_each_group_closes(
    micro_base, tmp_path
):
    raw = {
        "name": "bounds",
        "base": micro_base(domains=2, steps=4),
        "design": {"kind": "groups", "reference": "naive"},
        "groups": {
            "naive": {},
            "replay": {"mechanisms": [{"name": "replay", "capacity": 32}]},
            "joint": {"train": {"joint": "proportional", "rewarm": False}},
        },
    }
    out = tmp_path / "exp"
    with runs_in_this_process():
        summary = run_experiment(raw, out, workers=1, quiet=True)
    assert summary["failed"] == []
    write_report(out)

    results = pd.read_parquet(out / "results.parquet").set_index("group")
    assert results.loc["joint", "train_tokens"] == results.loc["naive", "train_tokens"]
    final = {g: float(v) for g, v in results["loss.final_mean"].items()}
    (bounds,) = load_analysis(out).budgets["same_shape"].joint_bounds
    assert (bounds.naive_group, bounds.joint_group) == ("naive", "joint")
    assert (bounds.naive, bounds.joint) == (final["naive"], final["joint"])
    # micro runs barely learn, so joint may or may not end below naive: either way the analysis
    # must say what the numbers say (a share where there is a gap, the reason where there is none)
    assert (bounds.note is None) == (final["joint"] < final["naive"])
    report = (out / "report.md").read_text()
    assert "Between naive fine-tuning and joint training (`joint`)" in report
    for p in bounds.placements:
        share = gap_closed(final["naive"], final[p.group], final["joint"])
        assert p.share == share
        cell = "n/a" if share is None else f"{100 * share:.0f}%"
        assert f"| {p.group} | {final[p.group]:.4g} | {cell} |" in report
