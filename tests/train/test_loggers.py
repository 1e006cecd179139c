"""Experiment loggers (train.loggers): every backend receives run.json's numbers on the global step,
row 0 included; numbers and run ids do not depend on them; resume neither duplicates nor loses a
point; a failing logger is contained and reported; bad settings are refused in one line."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from test_trainer import STEPS, micro_config

from forgetlab.config import ConfigError
from forgetlab.train import Trainer
from forgetlab.train.failures import LoggerError
from forgetlab.train.loggers import CsvLogger, mlflow_key
from forgetlab.train.rundir import config_hash
from logger_readers import (
    csv_points,
    mlflow_client,
    mlflow_history,
    offline_env,
    tensorboard_hparams,
    tensorboard_scalars,
    wandb_runs,
)

ALL = ["tensorboard", "wandb", "mlflow", "csv"]
KILL_AT = 11  # the 11th training step: after global step 10 was logged, the last checkpoint at 8


def logged_config(fixture_data: Any, loggers: list[str]) -> Any:
    return micro_config(fixture_data, eval_every=3, checkpoint_every=4, threads=1, loggers=loggers)


@pytest.fixture(scope="module")
def logged(fixture_data, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as patch:
        places = offline_env(patch, root)
        cfg = logged_config(fixture_data, ALL)
        record = Trainer(cfg, root / "run", progress=False).run()
    curves = pd.read_parquet(root / "run" / "curves.parquet")
    return SimpleNamespace(cfg=cfg, out=root / "run", record=record, curves=curves, **places)


def r_points(record: dict[str, Any]) -> dict[tuple[int, str], float]:
    """run.json's R as (global step, key): row i is the evaluation after i stages of STEPS."""
    return {
        (i * STEPS, f"R/{kind}/{domain}"): v
        for kind, matrix in record["R"].items()
        for i, row in enumerate(matrix)
        for domain, v in zip(record["domains"], row, strict=True)
    }


def metric_points(record: dict[str, Any]) -> dict[str, float]:
    """run.json's CL metrics as logged keys: scalars, and per-lag values as ``name@k``."""
    out = {}
    for kind in ("loss", "bpb", "accuracy"):
        for name, v in record["metrics"][kind].items():
            if isinstance(v, int | float) and math.isfinite(v):
                out[f"metrics/{kind}.{name}"] = float(v)
            elif isinstance(v, dict):
                out.update({f"metrics/{kind}.{name}@{k}": float(x) for k, x in v.items()})
    return out


def curve_points(curves: pd.DataFrame) -> dict[tuple[int, str], float]:
    """curves.parquet's training loss, learning rate and in-stage validation as logged keys."""
    out = {}
    for row in curves.itertuples(index=False):
        if not math.isnan(row.train_loss):
            out[(row.step, "train/train_loss")] = row.train_loss
            out[(row.step, "train/lr")] = row.lr
            out[(row.step, "train/grad_norm")] = row.grad_norm
        if not math.isnan(row.val_loss):
            out[(row.step, f"val/{row.domain}/loss")] = row.val_loss
            out[(row.step, f"val/{row.domain}/accuracy")] = row.val_accuracy
    return out


def test_csv_holds_every_r_kind_from_step_0_the_curves_and_the_metrics(logged):
    points = csv_points(logged.out)
    final = 3 * STEPS
    r = r_points(logged.record)
    assert (0, "R/accuracy/" + logged.record["domains"][2]) in r  # row 0, at step 0
    assert {k: points[k] for k in r} == r
    assert {k: points[k] for k in curve_points(logged.curves)} == curve_points(logged.curves)
    metrics = metric_points(logged.record)
    assert len(metrics) > 20 and {k: points[(final, k)] for k in metrics} == metrics
    assert logged.record["loggers"] == dict.fromkeys(ALL, "ok")


def test_tensorboard_shows_every_r_kind_on_the_global_step_and_the_hparams(logged):
    scalars = tensorboard_scalars(logged.out)
    for (step, key), v in r_points(logged.record).items():
        assert dict(scalars[key])[step] == pytest.approx(v, rel=1e-6)  # events hold float32
    assert [s for s, _ in scalars["R/bpb/" + logged.record["domains"][0]]] == [0, 6, 12, 18]
    for (step, key), v in curve_points(logged.curves).items():
        assert dict(scalars[key])[step] == pytest.approx(v, rel=1e-6)
    for key, v in metric_points(logged.record).items():
        assert scalars[key] == [(3 * STEPS, pytest.approx(v, rel=1e-6))]
    hp = tensorboard_hparams(logged.out)
    assert hp["seed"] == 1 and hp["train.lr"] == pytest.approx(3e-3)
    assert hp["order"] == " ".join(logged.cfg.data.domains)
    assert hp["model.preset"] == "micro" and hp["steps_per_stage"] == STEPS


def test_wandb_offline_run_holds_the_history_summary_and_config(logged):
    [run] = wandb_runs(logged.wandb)
    assert run["id"] == json.loads((logged.out / "loggers.json").read_text())["wandb"]
    history = run["history"]
    for expected in (r_points(logged.record), curve_points(logged.curves)):
        assert {(s, key): history[s][key] for s, key in expected} == expected
    metrics = metric_points(logged.record)
    assert {k: run["summary"][k] for k in metrics} == metrics
    assert run["config"]["seed"] == 1 and run["config"]["train.steps_per_stage"] == STEPS
    assert run["config"]["order"] == " ".join(logged.cfg.data.domains)


def test_mlflow_run_holds_every_point_and_the_params(logged):
    client = mlflow_client(logged.mlflow)
    run_id = json.loads((logged.out / "loggers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["forgetlab.run_dir"] == str(logged.out.resolve())
    for (step, key), v in {**r_points(logged.record), **curve_points(logged.curves)}.items():
        assert (step, v) in mlflow_history(client, run_id, key)
    for key, v in metric_points(logged.record).items():
        assert mlflow_history(client, run_id, mlflow_key(key)) == [(3 * STEPS, v)]
    assert run.data.params["seed"] == "1" and float(run.data.params["train.lr"]) == 3e-3


def test_loggers_change_no_number_and_no_run_id(fixture_data, logged, tmp_path):
    cfg = logged_config(fixture_data, [])
    assert config_hash(cfg) == config_hash(logged.cfg)
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert record["R"] == logged.record["R"] and record["metrics"] == logged.record["metrics"]
    assert not (tmp_path / "run" / "tb").exists() and record["loggers"] == {}


def test_resumed_run_logs_every_point_once(fixture_data, logged, tmp_path, killed_run):
    """Killed after step 10 was logged (last checkpoint: step 8): the CSV, TensorBoard and MLflow
    hold each point once, the same points as a run that never stopped, with run.json's values."""
    loggers = ["tensorboard", "mlflow", "csv"]
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        places = offline_env(patch, tmp_path)
        cfg = logged_config(fixture_data, loggers)
        killed_run(cfg, out, KILL_AT)
        before = csv_points(out)
        assert max(s for s, _ in before) == KILL_AT - 1  # points after the checkpoint at 8
        mlflow_id = json.loads((out / "loggers.json").read_text())["mlflow"]
        record = Trainer(cfg, out, progress=False).run()
    assert json.loads((out / "loggers.json").read_text())["mlflow"] == mlflow_id
    points, reference = csv_points(out), csv_points(logged.out)
    assert points.keys() == reference.keys()
    assert {k: points[k] for k in r_points(record)} == r_points(record) == r_points(logged.record)
    metrics = metric_points(record)
    assert {k: points[(3 * STEPS, k)] for k in metrics} == metrics
    curves = pd.read_parquet(out / "curves.parquet")
    assert {k: points[k] for k in curve_points(curves)} == curve_points(curves)

    scalars, ref_scalars = tensorboard_scalars(out), tensorboard_scalars(logged.out)
    assert scalars.keys() == ref_scalars.keys()
    for tag, series in scalars.items():
        assert [s for s, _ in series] == [s for s, _ in ref_scalars[tag]], tag

    client = mlflow_client(places["mlflow"])
    for key in ("train/train_loss", "R/loss/" + record["domains"][1]):
        steps = [s for s, _ in mlflow_history(client, mlflow_id, key)]
        assert steps == sorted(set(steps)) == [s for s, _ in csv_steps(points, key)]


def csv_steps(points: dict[tuple[int, str], float], key: str) -> list[tuple[int, float]]:
    return sorted((s, v) for (s, k), v in points.items() if k == key)


def test_a_restart_without_checkpoint_drops_the_killed_attempts_points(
    fixture_data, tmp_path, killed_run
):
    out = tmp_path / "run"
    cfg = logged_config(fixture_data, ["csv"])
    killed_run(cfg, out, 3)  # before the first checkpoint: the run starts again
    assert csv_points(out)
    record = Trainer(cfg, out, progress=False).run()
    points = csv_points(out)
    assert {k: points[k] for k in r_points(record)} == r_points(record)
    assert len([k for k in points if k[1] == "train/train_loss"]) == 3 * STEPS // 2


def test_a_logger_failing_mid_run_is_switched_off_and_reported(
    fixture_data, logged, tmp_path, monkeypatch, caplog
):
    original, calls = CsvLogger.log_metrics, []

    def failing(self, step, values):
        calls.append(step)
        if len(calls) == 4:
            raise OSError("disk quota exceeded")
        return original(self, step, values)

    monkeypatch.setattr(CsvLogger, "log_metrics", failing)
    cfg = logged_config(fixture_data, ["csv", "tensorboard"])
    with caplog.at_level(logging.WARNING, logger="forgetlab.train"):
        record = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert record["status"] == "finished" and record["R"] == logged.record["R"]
    step = calls[3]
    assert record["loggers"] == {
        "csv": f"failed at step {step}: OSError: disk quota exceeded",
        "tensorboard": "ok",
    }
    assert json.loads((tmp_path / "run" / "run.json").read_text())["loggers"] == record["loggers"]
    assert f"logger csv failed at step {step}" in caplog.text
    assert max(s for s, _ in csv_points(tmp_path / "run")) < step  # nothing after it
    assert [s for s, _ in tensorboard_scalars(tmp_path / "run")["R/loss/" + record["domains"][0]]] == [
        0, 6, 12, 18
    ]


def test_a_logger_that_cannot_start_fails_the_run_before_training(fixture_data, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    out = tmp_path / "run"
    cfg = logged_config(fixture_data, ["mlflow"])
    with pytest.MonkeyPatch.context() as patch:
        offline_env(patch, tmp_path)
        patch.setenv("MLFLOW_TRACKING_URI", (blocker / "mlruns").as_uri())
        with pytest.raises(LoggerError, match=r"^train.loggers: the mlflow logger could not start"):
            Trainer(cfg, out, progress=False).run()
        failed = json.loads((out / "run.json").read_text())
        assert failed["status"] == "failed" and failed["failure"]["logger"] == "mlflow"
        assert "\n" not in failed["error"] and failed["R"]["loss"] == []  # no evaluation, no step
        assert not (out / "checkpoints").exists()
        offline_env(patch, tmp_path)  # the setting fixed: the same command runs
        assert Trainer(cfg, out, progress=False).run()["status"] == "finished"


def test_an_experiment_created_by_a_parallel_run_meanwhile_is_joined(fixture_data, tmp_path):
    """A study's runs start at once: another process creates the experiment between this run's
    lookup and its create (MLflow: 'already exists'). The run joins that experiment; it once
    failed with LoggerError (seen in CI)."""
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as patch:
        places = offline_env(patch, tmp_path)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "raced")
        theirs = mlflow_client(places["mlflow"]).create_experiment("raced")
        lookup = MlflowClient.get_experiment_by_name
        calls: list[str] = []

        def late(self: Any, name: str) -> Any:  # the first lookup predates the other's create
            calls.append(name)
            return None if len(calls) == 1 else lookup(self, name)

        patch.setattr(MlflowClient, "get_experiment_by_name", late)
        record = Trainer(logged_config(fixture_data, ["mlflow"]), tmp_path / "run", progress=False).run()
    assert record["status"] == "finished" and len(calls) == 2
    run_id = json.loads((tmp_path / "run" / "loggers.json").read_text())["mlflow"]
    assert mlflow_client(places["mlflow"]).get_run(run_id).info.experiment_id == theirs


def test_a_studys_runs_create_its_experiment_and_parent_under_the_study_lock(
    fixture_data, tmp_path
):
    """MLflow's file store does not make get-or-create atomic: two runs of a study starting at
    once could each create an experiment of the study's name (their children then split between
    two experiments). The study's lock must be held while either is created."""
    import fcntl

    from mlflow.tracking import MlflowClient

    from forgetlab.train.loggers import MlflowLogger, Opening, RunIdentity

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    lock = study_dir / ".mlflow.lock"
    held: list[tuple[str, bool]] = []

    def probing(name: str, create: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock.open("a") as other:  # another process's view of the lock
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(other, fcntl.LOCK_UN)
                    held.append((name, False))
                except BlockingIOError:
                    held.append((name, True))
            return create(self, *args, **kwargs)

        return wrapper

    who = RunIdentity("run", "abc", 0, ["code"], 3, study="locked", study_dir=study_dir)
    opening = Opening(logged_config(fixture_data, ["mlflow"]), study_dir / "runs" / "abc", who,
                      None, {})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        offline_env(patch, tmp_path)
        for name in ("create_experiment", "create_run"):
            patch.setattr(MlflowClient, name, probing(name, getattr(MlflowClient, name)))
        MlflowLogger(opening).close("finished")
    # the experiment and the parent under the lock; the run itself after it
    assert held == [("create_experiment", True), ("create_run", True), ("create_run", False)]


@pytest.mark.parametrize(
    ("loggers", "message"),
    [
        (["wnadb"], r"train\.loggers\[0\] = 'wnadb'.*'tensorboard', 'wandb', 'mlflow' or 'csv'"),
        (["csv", "csv"], r"train\.loggers = \['csv', 'csv'\] lists \['csv'\] twice"),
    ],
)
def test_bad_loggers_are_refused_in_one_line(fixture_data, loggers, message):
    with pytest.raises(ConfigError, match=message) as e:
        logged_config(fixture_data, loggers)
    assert "\n" not in str(e.value)


def test_a_missing_package_names_the_extra_to_install(fixture_data, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'forgetlab\[wandb\]'"):
        Trainer(logged_config(fixture_data, ["csv", "wandb"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()



def test_probe_columns_flow_to_the_loggers_as_r_columns(fixture_data, tmp_path):
    """data.probes' matrices are logged as R/<kind>/<probe> beside the stream's domains, row 0
    included, and their probe_forgetting columns with the other metrics."""
    from test_probes import STEPS as PROBE_STEPS
    from test_probes import probe_config

    cfg = probe_config(fixture_data, loggers=["csv"])
    record = Trainer(cfg, tmp_path / "run", progress=False).run()
    points = csv_points(tmp_path / "run")
    probes = record["probes"]
    expected = {
        (i * PROBE_STEPS, f"R/{kind}/{probe}"): v
        for kind, matrix in probes["R"].items()
        for i, row in enumerate(matrix)
        for probe, v in zip(probes["domains"], row, strict=True)
    }
    assert len(expected) == 3 * 3 * 2 and {k: points[k] for k in expected} == expected
    final = len(record["domains"]) * PROBE_STEPS
    forgetting = probes["metrics"]["loss"]["probe_forgetting"]
    assert points[(final, "metrics/loss.probe_forgetting")] == forgetting["mean"]
    for probe, v in forgetting["per_probe"].items():
        assert points[(final, f"metrics/loss.probe_forgetting@{probe}")] == v
