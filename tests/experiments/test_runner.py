"""Running a study: results.parquet, a failing run recorded while the others finish, resume,
pre-registration change detection, and the plan's FLOPs matching what runs record."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import threading
from contextlib import suppress

import pandas as pd
import pytest

from forgetlab.config import ConfigError
from forgetlab.experiments import ExperimentStore, build_plan, load_spec, run_experiment
from logger_readers import offline_env

CONTRACT_COLUMNS = {
    "run_id",
    "group",
    "factor.LR",
    "seed",
    "order",
    "budget",
    "status",
    "error",
    "loss.ACC",
    "loss.BWT",
    "loss.FWT",
    "loss.average_forgetting",
    "loss.plasticity",
    "loss.retention@1",
    "loss.final_mean",
    "bpb.final_mean",
    "accuracy.ACC",
    "bpb.BWT",
    "convergence_mean",
    "flops.training_total",
    "flops.total_with_eval",
    "train_tokens",
    "wall_s",
    "tokens_per_s",
    "mfu",
    "peak_rss_bytes",
}


@pytest.fixture(scope="module")
def study(micro_base):
    base = micro_base(domains=2, steps=4)
    return {
        "name": "toy",
        "base": base,
        "factors": {
            "LR": {
                "lo": {},
                "hi": {"train": {"lr": 3e-3}},
                # valid config, fails at run time: windows longer than the fixture's splits
                "bad": {"model": {"block_size": 50000}},
            }
        },
        "seeds": [0],
        "preregistration": {"primary_metric": "loss.average_forgetting", "alpha": 0.05},
    }


@pytest.fixture(scope="module")
def first_invocation(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "exp"
    summary = run_experiment(study, out, workers=2, quiet=True, argv=["forgetlab", "run"])
    return study, out, summary


def test_a_failing_run_is_recorded_and_the_others_finish(first_invocation):
    _, out, summary = first_invocation
    frame = pd.read_parquet(out / "results.parquet")
    by_group = frame.set_index("group")
    assert by_group.loc["lo", "status"] == by_group.loc["hi", "status"] == "finished"
    assert by_group.loc["bad", "status"] == "failed"
    assert "50000" in by_group.loc["bad", "error"] or "block" in by_group.loc["bad", "error"]
    assert summary["failed"] == [by_group.loc["bad", "run_id"]]
    assert by_group.loc["lo", "loss.average_forgetting"] == pytest.approx(
        json.loads((out / "runs" / by_group.loc["lo", "run_id"] / "run.json").read_text())[
            "metrics"
        ]["loss"]["average_forgetting"]
    )
    doc = json.loads((out / "experiment.json").read_text())
    assert doc["finished"] is None  # not every run finished
    assert doc["factors"] == {"LR": ["lo", "hi", "bad"]} and doc["reference"] == "lo"


def test_results_parquet_has_the_contract_columns(first_invocation):
    _, out, _ = first_invocation
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.columns) >= CONTRACT_COLUMNS
    assert len(frame) == 3 and frame["order"].iloc[0] == "code>math"
    finished = frame[frame.status == "finished"]
    assert (finished["train_tokens"] == 2 * 4 * 4 * 64).all()
    assert finished["flops.training_total"].notna().all()


def test_plan_flops_equal_what_the_runs_record(first_invocation):
    study, out, _ = first_invocation
    spec, _ = load_spec(study)
    plan = {r["run_id"]: r for r in build_plan(spec, None, bench=False)["runs"]}
    frame = pd.read_parquet(out / "results.parquet")
    for _, row in frame[frame.status == "finished"].iterrows():
        est = plan[row["run_id"]]
        assert est["train_tokens"] == row["train_tokens"]
        assert est["flops_training"] == pytest.approx(row["flops.training_total"], rel=1e-9)
        assert est["flops_training"] + est["flops_eval"] == pytest.approx(
            row["flops.total_with_eval"], rel=1e-9
        )


def test_a_second_invocation_skips_finished_runs_and_flags_a_changed_preregistration(
    first_invocation, tmp_path
):
    study, first_out, _ = first_invocation
    out = tmp_path / "exp"
    shutil.copytree(first_out, out)
    store = ExperimentStore(out)
    first = store.read()
    finished = [r["run_id"] for r in first["runs"] if r["group"] != "bad"]
    stamps = {i: (out / "runs" / i / "run.json").stat().st_mtime_ns for i in finished}
    changed = copy.deepcopy(study)
    changed["preregistration"]["alpha"] = 0.01  # decided after seeing data: must be flagged
    summary = run_experiment(changed, out, workers=1, quiet=True, argv=["again"])
    assert summary["skipped_finished"] == 2 and summary["ran"] == 1  # only the failed one retried
    assert {i: (out / "runs" / i / "run.json").stat().st_mtime_ns for i in finished} == stamps
    doc = store.read()
    assert doc["preregistration_changed"] is True
    assert doc["preregistration_sha256"] == first["preregistration_sha256"]
    assert doc["preregistration_sha256_now"] != first["preregistration_sha256"]
    assert (
        doc["preregistration"]["alpha"] == 0.05
        and doc["preregistered_at"] == first["preregistered_at"]
    )
    assert doc["commands"] == [["forgetlab", "run"], ["again"]]


def test_an_interrupted_run_resumes_from_its_checkpoint(micro_base, tmp_path, monkeypatch):
    from forgetlab.train import Trainer

    raw = {"name": "resume", "base": micro_base(domains=3, steps=4), "factors": {"LR": {"lo": {}}}}
    out = tmp_path / "exp"
    spec, _ = load_spec(raw)
    from forgetlab.experiments import expand

    (run,) = expand(spec)
    original = Trainer._run_stage

    def stop_after_first_stage(self, stage, *args):
        if stage == 1:
            raise KeyboardInterrupt  # the machine went away after stage 1's checkpoint
        return original(self, stage, *args)

    monkeypatch.setattr(Trainer, "_run_stage", stop_after_first_stage)
    with pytest.raises(KeyboardInterrupt):
        Trainer(run.config, out / "runs" / run.run_id, progress=False).run()
    monkeypatch.undo()
    summary = run_experiment(raw, out, workers=1, quiet=True)
    assert summary["ran"] == 1 and summary["failed"] == []
    log = (out / "logs" / f"{run.run_id}.log").read_text()
    assert "resuming" in log and "at stage 1" in log
    record = json.loads((out / "runs" / run.run_id / "run.json").read_text())
    assert record["status"] == "finished" and len(record["R"]["loss"]) == 4
    assert json.loads((out / "experiment.json").read_text())["finished"] is not None


def test_another_scale_in_the_same_directory_is_refused(micro_base, tmp_path):
    raw = {
        "name": "s",
        "base": micro_base(),
        "factors": {"A": {"a": {}}},
        "scales": {"one": {"seeds": [0]}, "two": {"seeds": [1]}},
    }
    store = ExperimentStore(tmp_path)
    store.begin({"name": "s", "scale": "one", "preregistration": None, "runs": []}, [], {})
    with pytest.raises(ConfigError, match="at scale 'one', not 's' at scale 'two'"):
        run_experiment(raw, tmp_path, scale="two", quiet=True)


def test_two_devices_per_run_train_data_parallel_under_torchrun(ddp_local):
    """devices_per_run = 2 starts the worker under torchrun (gloo ranks on the CPU)."""
    (run_dir,) = (ddp_local / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["timing"]["throughput"]["devices"] == 2
    # 2 ranks x micro-batch 4 x 64 tokens x 3 steps x 2 stages
    assert record["tokens"]["train_total"] == 2 * 4 * 64 * 3 * 2


def test_a_rank_that_fails_alone_fails_its_run_instead_of_hanging(
    ddp_study, tmp_path, monkeypatch, processes
):
    """Only rank 0 starts the run's loggers: an MLflow store it cannot open fails rank 0 while
    rank 1 trains on into its next collective. Rank 0 leaves the process group without a
    barrier (which would wait out gloo's 30-minute timeout against rank 1's all-reduce),
    torchrun stops rank 1, and the run is failed with rank 0's error."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (blocker / "mlruns").as_uri())
    raw = copy.deepcopy(ddp_study)
    raw["base"]["train"]["loggers"] = ["mlflow"]
    out = tmp_path / "exp"
    summary: dict = {}
    study = threading.Thread(target=lambda: summary.update(run_experiment(raw, out, quiet=True)))
    study.start()
    study.join(timeout=300)  # a hang fails the test here instead of holding the suite
    hung = study.is_alive()
    for pid in processes.naming(out):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    study.join()
    assert not hung, "the study still waits for a run whose rank 0 failed"
    (run_id,) = summary["failed"]
    error = summary["errors"][run_id]
    assert "train.loggers: the mlflow logger could not start" in error, error
    assert str(out / "logs" / f"{run_id}.log") in error


def test_runs_are_queued_costliest_first(micro_base):
    """Longest-processing-time order: the queue follows run_flops, which grows with the steps,
    the evaluation and a mechanism's extra FLOPs; equal costs keep the design's order."""
    from forgetlab.experiments.design import expand
    from forgetlab.experiments.plan import run_flops
    from forgetlab.experiments.runner import longest_first

    spec, _ = load_spec({
        "name": "lpt",
        "base": micro_base(domains=2, steps=4),
        "design": {"kind": "groups"},
        "groups": {
            "short": {},
            "long": {"train": {"steps_per_stage": 8}},
            "short_too": {"train": {"lr": 3e-3}},
            "scored": {"mechanisms": [{"name": "selective_write", "write_fraction": 0.5}]},
        },
        "seeds": [0],
    }, None)
    runs = expand(spec)
    cost = {r.group: run_flops(r.config) for r in runs}
    assert cost["long"] > cost["scored"] > cost["short"] == cost["short_too"]
    # selective write scores every micro-batch with one extra forward: a third of a step's FLOPs
    extra = cost["scored"] - cost["short"]
    assert extra > 0.2 * (cost["long"] - cost["short"])
    assert [r.group for r in longest_first(runs)] == ["long", "scored", "short", "short_too"]
