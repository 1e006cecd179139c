"""A study's runs are grouped in the experiment trackers: W&B ``group`` = study and ``job_type`` =
design group; in MLflow one parent run per study with a child run per run, each child holding its
run.json's R on the global step (runs started in parallel worker processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forgetlab.experiments import run_experiment
from logger_readers import mlflow_client, mlflow_history, offline_env, wandb_runs


@pytest.fixture(scope="module")
def logged_study(micro_base: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("study-loggers")
    base = micro_base(domains=2, steps=3)
    base["train"]["loggers"] = ["wandb", "mlflow"]
    raw = {
        "name": "tracked",
        "base": base,
        "factors": {"LR": {"lo": {}, "hi": {"train": {"lr": 3e-3}}}},
        "seeds": [0],
    }
    with pytest.MonkeyPatch.context() as patch:
        places = offline_env(patch, root)
        summary = run_experiment(raw, root / "exp", workers=2, quiet=True)
    assert summary["finished"] == 2, summary
    doc = json.loads((root / "exp" / "experiment.json").read_text())
    records = {
        r["run_id"]: json.loads((root / "exp" / "runs" / r["run_id"] / "run.json").read_text())
        for r in doc["runs"]
    }
    return {"root": root / "exp", "plan": doc["runs"], "records": records, **places}


def test_wandb_groups_the_runs_by_study_and_design_group(logged_study):
    runs = {r["config"]["run_id"]: r for r in wandb_runs(logged_study["wandb"])}
    assert runs.keys() == logged_study["records"].keys()
    for planned in logged_study["plan"]:
        run = runs[planned["run_id"]]
        assert (run["group"], run["job_type"]) == ("tracked", planned["group"])
        assert run["config"]["level.LR"] == planned["group"] and run["config"]["budget"]
        loss = logged_study["records"][planned["run_id"]]["R"]["loss"]
        domain = logged_study["records"][planned["run_id"]]["domains"][0]
        assert [run["history"][3 * i][f"R/loss/{domain}"] for i in range(3)] == [
            row[0] for row in loss
        ]


def test_mlflow_nests_each_run_under_one_parent_per_study(logged_study):
    client = mlflow_client(logged_study["mlflow"])
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "forgetlab.study_dir" in r.data.tags]
    assert len(parents) == 1  # created once, though two workers started at the same time
    assert parents[0].data.tags["forgetlab.study_dir"] == str(logged_study["root"].resolve())
    children = [r for r in runs if r not in parents]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    by_id = {r.data.tags["forgetlab.run_id"]: r for r in children}
    assert by_id.keys() == logged_study["records"].keys()
    for planned in logged_study["plan"]:
        child = by_id[planned["run_id"]]
        assert child.data.tags["forgetlab.group"] == planned["group"]
        assert child.data.params["group"] == planned["group"] and child.info.status == "FINISHED"
        record = logged_study["records"][planned["run_id"]]
        for j, domain in enumerate(record["domains"]):
            history = mlflow_history(client, child.info.run_id, f"R/bpb/{domain}")
            assert history == [(3 * i, row[j]) for i, row in enumerate(record["R"]["bpb"])]


def test_a_study_whose_logger_is_not_installed_is_refused_before_any_run(
    micro_base, tmp_path, monkeypatch
):
    import importlib.util

    from forgetlab.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    base = micro_base(domains=2, steps=3)
    base["train"]["loggers"] = ["csv", "mlflow"]
    raw = {"name": "untracked", "base": base, "factors": {"LR": {"lo": {}}}, "seeds": [0]}
    with pytest.raises(ConfigError, match=r"pip install 'forgetlab\[mlflow\]'"):
        run_experiment(raw, tmp_path / "exp", quiet=True)
    assert not (tmp_path / "exp").exists()
