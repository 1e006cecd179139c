"""A study with ``data.probes``: probe columns in results.parquet from the first row on, the
``probe_forgetting`` alias in a pre-registered hypothesis, the report's probe section."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetlab.analysis.report import write_report
from forgetlab.experiments import run_experiment
from micro_run import runs_in_this_process

PROBE = "legal"


@pytest.fixture(scope="module")
def probed_study(micro_base, tmp_path_factory):
    base = micro_base(domains=2, steps=4)
    base["data"]["probes"] = [PROBE]
    spec = {
        "name": "probed",
        "base": base,
        "design": {"kind": "groups", "reference": "naive"},
        "groups": {
            "naive": {},
            "replay": {"mechanisms": [{"name": "replay", "capacity": 8, "ratio": "1:1"}]},
        },
        "seeds": [0],
        "preregistration": {
            "primary_metric": "loss.probe_forgetting",
            "hypotheses": [
                {"id": "P1", "statement": "the probe's loss moves by under 10 nats",
                 "criterion": "abs(probe_forgetting.replay) < 10 and abs(probe_forgetting.naive) "
                 "< 10"},
                {"id": "P2", "statement": "per-probe column",
                 "criterion": f"loss_probe_forgetting_{PROBE}.naive > -10"},
            ],
        },
    }
    out = tmp_path_factory.mktemp("study") / "exp"
    with runs_in_this_process():
        run_experiment(spec, out, workers=1, quiet=True, argv=["forgetlab", "run"])
    return out


def test_results_hold_each_runs_probe_forgetting(probed_study):
    frame = pd.read_parquet(probed_study / "results.parquet")
    meta = json.loads((probed_study / "experiment.json").read_text())
    assert all(run["probes"] == [PROBE] for run in meta["runs"])
    for run in meta["runs"]:
        record = json.loads((probed_study / run["dir"] / "run.json").read_text())
        row = frame.set_index("run_id").loc[run["run_id"]]
        recorded = record["probes"]["metrics"]
        assert row["loss.probe_forgetting"] == pytest.approx(
            recorded["loss"]["probe_forgetting"]["mean"]
        )
        assert row[f"accuracy.probe_forgetting@{PROBE}"] == pytest.approx(
            recorded["accuracy"]["probe_forgetting"]["per_probe"][PROBE]
        )
        loss = record["probes"]["R"]["loss"]
        assert row[f"loss.probe_forgetting@{PROBE}"] == pytest.approx(loss[-1][0] - loss[0][0])


def test_hypotheses_on_probe_forgetting_are_judged(probed_study):
    write_report(probed_study)
    analysis = json.loads((probed_study / "analysis.json").read_text())
    verdicts = {v["id"]: v for b in analysis["budgets"].values() for v in b["hypotheses"]}
    assert verdicts["P1"]["verdict"] == "pass" and verdicts["P2"]["verdict"] == "pass"
    assert set(verdicts["P1"]["evidence"]) == {"probe_forgetting.replay", "probe_forgetting.naive"}


def test_the_report_has_a_probe_section_with_each_groups_forgetting(probed_study):
    write_report(probed_study)
    text = (probed_study / "report.md").read_text()
    assert "General ability: probe domains (never trained on)" in text
    frame = pd.read_parquet(probed_study / "results.parquet").set_index("group")
    meta = json.loads((probed_study / "experiment.json").read_text())
    naive = next(r for r in meta["runs"] if r["group"] == "naive")
    before = json.loads((probed_study / naive["dir"] / "run.json").read_text())["probes"]["R"]
    section = text.split("General ability")[1].split("\n#")[0]
    row = next(line for line in section.splitlines() if line.startswith("| naive"))
    mean = frame.loc["naive", f"loss.probe_forgetting@{PROBE}"]
    assert f"{mean:.4g}" in row and f"{before['loss'][0][0]:.4g}" in row  # one run: sd n/a

