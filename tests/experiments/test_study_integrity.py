"""A study with a diverging run and a corrupt run record: recorded, reported, repaired."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from forgetlab.analysis.load import load_experiment
from forgetlab.analysis.report import write_report
from forgetlab.experiments import run_experiment
from forgetlab.train import RunDir
from micro_run import runs_in_this_process


@pytest.fixture(scope="module")
def study(micro_base, tmp_path_factory):
    raw = {
        "name": "integrity",
        "base": micro_base(domains=2, steps=4),
        "factors": {"LR": {"lo": {}, "huge": {"train": {"lr": 1e3, "warmup_steps": 0}}}},
        "seeds": [0],
    }
    out = tmp_path_factory.mktemp("study") / "exp"
    with runs_in_this_process():  # the rerun below starts worker processes (and their logs)
        summary = run_experiment(raw, out, workers=1, quiet=True, argv=["forgetlab", "run"])
    frame = pd.read_parquet(out / "results.parquet").set_index("group")
    return raw, out, summary, frame


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forgetlab.cli.main", *args],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})


def test_a_diverging_run_is_recorded_failed_and_the_study_goes_on(study):
    _, out, summary, frame = study
    huge = frame.loc["huge", "run_id"]
    assert summary["failed"] == [huge] and frame.loc["lo", "status"] == "finished"
    assert frame.loc["huge", "status"] == "failed"
    assert "training diverged" in frame.loc["huge", "error"]
    record = RunDir(out / "runs" / huge).read()
    assert record["status"] == "failed" and record["failure"]["kind"] == "divergence"
    assert pd.isna(frame.loc["huge", "loss.average_forgetting"])


def test_the_report_lists_failed_runs_and_why(study):
    _, out, _, frame = study
    md = write_report(out)["markdown"].read_text()
    assert "### Failed and corrupt runs" in md
    line = next(x for x in md.splitlines() if f"`{frame.loc['huge', 'run_id']}`" in x
                and "**failed**" in x)
    assert "training diverged: the gradient norm is nan at step" in line


def test_a_truncated_run_json_is_named_listed_and_rebuilt_by_a_rerun(study, tmp_path):
    import shutil

    raw, first, _, frame = study
    out = tmp_path / "exp"
    shutil.copytree(first, out, symlinks=True)
    lo = frame.loc["lo", "run_id"]
    run_json = out / "runs" / lo / "run.json"
    before = json.loads(run_json.read_text())
    run_json.write_text(run_json.read_text()[:100])

    shown = cli("show", str(out / "runs" / lo))  # one line naming the file and what to do
    assert shown.returncode == 2 and "Traceback" not in shown.stderr
    assert f"'{run_json}' is not a readable run record" in shown.stderr
    assert "again rebuilds it: it resumes the run from its newest intact checkpoint" in shown.stderr

    exp = load_experiment(out)  # results.parquet still says finished: the record wins
    row = exp.results.set_index("group").loc["lo"]
    assert row["status"] == "corrupt" and str(run_json) in row["error"]
    assert pd.isna(row["loss.average_forgetting"]) and exp.finished().empty
    reported = cli("report", str(out))
    assert reported.returncode == 0 and f"run {lo}: '{run_json}'" in reported.stderr
    assert "**corrupt**" in (out / "report.md").read_text()

    summary = run_experiment(raw, out, workers=1, quiet=True, argv=["again"])
    assert lo not in summary["failed"] and summary["ran"] == 2  # the corrupt one and the failed
    after = json.loads(run_json.read_text())
    assert after["status"] == "finished" and after["R"] == before["R"]
    assert after["metrics"] == before["metrics"]
    assert "unreadable; resuming" in (out / "logs" / f"{lo}.log").read_text()
