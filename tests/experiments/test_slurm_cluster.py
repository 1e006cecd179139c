"""A study on a real Slurm cluster (opt-in: skipped unless `sinfo` answers; on one machine
`sudo scripts/slurm_single_node.sh start` brings one up). Runs go through `forgetlab run
--executor slurm` as one array job and must equal the local executor's numbers; a task that dies
without a result is recorded; an orchestrator killed while its array job runs is replaced by a
second invocation that waits for the same job instead of submitting it again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pandas as pd
import pytest
from cluster_studies import same_numbers, write_study


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and any(s in res.stdout for s in ("idle", "mixed"))


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _slurm_answers(),
        reason="no Slurm cluster answers sinfo (sudo scripts/slurm_single_node.sh start)",
    ),
]


@pytest.fixture(scope="module")
def study(micro_base: Any) -> dict[str, Any]:
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    return {
        "name": "slurm",
        "base": micro_base(domains=2, steps=3),
        "factors": {"LR": {"lo": {}, "hi": {"train": {"lr": 3e-3}}}},
        "seeds": [0],
        "cpus_per_run": 1,
        "slurm": {"time": 10, "poll_s": 1},
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forgetlab.cli.main", "run", *args, "--executor", "slurm",
            "--quiet"]  # fmt: skip


def test_a_study_as_one_slurm_array_job_equals_the_local_run(study, tmp_path):
    from forgetlab.experiments import run_experiment

    local = tmp_path / "local"
    run_experiment({k: v for k, v in study.items() if k != "slurm"}, local, workers=2, quiet=True)
    out = tmp_path / "exp"
    res = subprocess.run(cli(str(write_study(tmp_path / "s.toml", study)), "--workers", "2",
                             "--out", str(out)), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    same_numbers(pd.read_parquet(local / "results.parquet"),
                 pd.read_parquet(out / "results.parquet"))  # fmt: skip
    jobs = json.loads((out / "logs" / "slurm" / "jobs.json").read_text())["jobs"]
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # one array job for the study


def test_a_task_that_dies_without_a_result_is_recorded_from_squeue(study, tmp_path):
    """A 1 s CPU limit (a setup line; Slurm propagates it to the task) kills the task while it
    imports torch. No sacct on a cluster without accounting: squeue tells it is gone."""
    raw = {**study, "factors": {"LR": {"lo": {}}}, "slurm": {**study["slurm"],
                                                             "setup": ["ulimit -t 1"]}}  # fmt: skip
    res = subprocess.run(cli(str(write_study(tmp_path / "s.toml", raw)), "--out",
                             str(tmp_path / "exp")), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    assert "ended without a result" in res.stdout


def test_a_rerun_waits_for_the_array_job_a_killed_orchestrator_left_running(study, tmp_path):
    # the array may not start for 20 s (sbatch --begin), so the re-run surely finds it queued
    later = {**study, "slurm": {**study["slurm"], "sbatch": {"begin": "now+20"}}}
    spec = write_study(tmp_path / "s.toml", later)
    out = tmp_path / "exp"
    jobs = out / "logs" / "slurm" / "jobs.json"
    first = subprocess.Popen(cli(str(spec), "--workers", "2", "--out", str(out)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not jobs.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # the login node session ends; the array job goes on
    first.wait()
    submitted = json.loads(jobs.read_text())
    res = subprocess.run(cli(str(spec), "--workers", "2", "--out", str(out)),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(jobs.read_text()) == submitted  # nothing submitted twice
    assert res.stderr.count("waiting for its job") == 2 and "submitted" not in res.stderr
    frame = pd.read_parquet(out / "results.parquet")
    assert (frame.status == "finished").all() and len(frame) == 2


def test_two_ranks_per_run_as_a_real_slurm_task_equal_the_local_executor(
    ddp_study, ddp_local, tmp_path
):
    """devices_per_run = 2 through sbatch: the array task asks for both ranks' CPUs and starts
    torchrun's launcher inside its allocation (gloo ranks, [slurm] gpus = 0)."""
    raw = {**ddp_study, "cpus_per_run": 2, "slurm": {"time": 10, "poll_s": 1}}
    out = tmp_path / "exp"
    res = subprocess.run(cli(str(write_study(tmp_path / "s.toml", raw)), "--out", str(out)),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    frame = pd.read_parquet(out / "results.parquet")
    same_numbers(pd.read_parquet(ddp_local / "results.parquet"), frame)
    record = json.loads((out / "runs" / frame.run_id[0] / "run.json").read_text())
    assert record["timing"]["throughput"]["devices"] == 2
