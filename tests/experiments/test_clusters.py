"""Studies on clusters: a real Ray head (``ray start``) reached by ``--address`` with token
authentication, a stale Ray cluster file, Slurm array jobs through submitit's local executor, and
runs of two data-parallel ranks as a Ray task and as an array task; every cluster run must give
the local executor's numbers bit for bit, and a rank killed mid-run must fail its run, not hang
the study."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cluster_studies import same_numbers, write_study

from forgetlab.config import ConfigError
from forgetlab.experiments import load_spec, run_experiment
from forgetlab.locks import holder

RAY_BIN = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def study(micro_base: Any) -> dict[str, Any]:
    return {
        "name": "clusters",
        "base": micro_base(domains=2, steps=3),
        "factors": {"LR": {"lo": {}, "hi": {"train": {"lr": 3e-3}}}},
        "seeds": [0],
    }


@pytest.fixture(scope="module")
def local_results(study: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local") / "exp"
    summary = run_experiment(study, out, workers=2, quiet=True)
    assert summary["finished"] == 2
    return pd.read_parquet(out / "results.parquet")


def forgetlab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forgetlab.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ray(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as f:
        return subprocess.Popen([str(RAY_BIN), "start", "--block", *args], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def wait_for(what: str, done: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while not done():
        assert proc.poll() is None, f"{what}: ray start exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what}: still waiting: {log.read_text()[-2000:]}"
        time.sleep(0.5)


@contextmanager
def ray_cluster(env: dict[str, str], logs: Path) -> Iterator[str]:
    """A two-node Ray cluster on this machine: a head with 2 CPUs and a second node with 1,
    each from ``ray start --block`` in its own process group, all killed at the end; its own
    temp dir, so no other Ray instance here is touched."""
    port = free_port()
    head = start_ray([
        "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
        "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}", f"--temp-dir={env['RAY_TMPDIR']}",
    ], env, logs / "head.log")  # fmt: skip
    procs = [head]
    try:
        wait_for("head", lambda: "Ray runtime started" in (logs / "head.log").read_text(), head,
                 logs / "head.log")  # fmt: skip
        address = f"127.0.0.1:{port}"
        node = start_ray([f"--address={address}", "--num-cpus=1", "--num-gpus=0"], env,
                         logs / "node.log")  # fmt: skip
        procs.append(node)

        def two_nodes() -> bool:
            status = subprocess.run([str(RAY_BIN), "status", f"--address={address}"], env=env,
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
            return "3.0 CPU" in status.stdout

        wait_for("second node", two_nodes, node, logs / "node.log")
        yield address
    finally:
        # SIGTERM lets ray start stop its daemons; SIGKILL takes whatever is left of a group
        for proc in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)


@pytest.fixture
def ray_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    pytest.importorskip("ray", reason="ray is an optional extra: pip install forgetlab[ray]")
    # a short temp dir: Ray's socket paths under it must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="flray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(OMP_NUM_THREADS="1", RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0")
    yield env
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_study_on_a_ray_cluster_with_token_auth_equals_the_local_run(
    study, local_results, ray_env, tmp_path
):
    """--address reaches a cluster started by `ray start` that demands a token; the driver has
    the token (RAY_AUTH_TOKEN) but no RAY_AUTH_MODE, which Ray alone refuses. A run may ask for
    the largest node's 2 CPUs, never the cluster's 3."""
    token = uuid.uuid4().hex
    head_env = {**ray_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    driver_env = {**ray_env, "RAY_AUTH_TOKEN": token}
    spec = write_study(tmp_path / "study.toml", study)
    too_big = write_study(tmp_path / "big.toml", {**study, "cpus_per_run": 3})
    out = tmp_path / "exp"
    with ray_cluster(head_env, tmp_path) as address:
        res = forgetlab(
            "run", str(spec), "--executor", "ray", "--address", address, "--workers", "2",
            "--quiet", "--out", str(out), env=driver_env,
        )  # fmt: skip
        refused = forgetlab("run", str(too_big), "--executor", "ray", "--address", address,
                            "--out", str(tmp_path / "big"), env=driver_env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 finished" in res.stdout
    same_numbers(local_results, pd.read_parquet(out / "results.parquet"))
    assert json.loads((out / "experiment.json").read_text())["env"]["executor"] == "ray"
    assert refused.returncode == 2
    assert "cpus_per_run = 3 but the largest node" in refused.stderr
    assert "has 2 CPUs; allowed: 1..2" in refused.stderr


@pytest.mark.slow
def test_a_stale_ray_cluster_file_is_ignored_when_no_cluster_is_named(study, ray_env, tmp_path):
    """`ray start` leaves RAY_TMPDIR/ray/ray_current_cluster behind; plain ray.init(num_cpus=..)
    then tries to join that dead cluster and refuses num_cpus. With no --address and no
    RAY_ADDRESS the study starts a fresh local instance instead."""
    stale = Path(ray_env["RAY_TMPDIR"]) / "ray"
    stale.mkdir()
    (stale / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    refused = subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(num_cpus=1)"],
        capture_output=True, text=True, env=ray_env, timeout=120,
    )  # fmt: skip
    assert "num_cpus and num_gpus must not be provided" in refused.stderr
    small = copy.deepcopy({**study, "factors": {"LR": {"lo": {}}}})
    del small["base"]["train"]["threads"]
    out = tmp_path / "exp"
    res = forgetlab(
        "run", str(write_study(tmp_path / "s.toml", small)), "--executor", "ray", "--quiet",
        "--out", str(out), env=ray_env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    frame = pd.read_parquet(out / "results.parquet")
    assert frame["status"].tolist() == ["finished"]
    record = json.loads((out / "runs" / frame.run_id[0] / "run.json").read_text())
    # no train.threads, one worker: the run asks for (and uses) all CPUs of the one node
    assert record["env"]["threads"] == os.cpu_count()


# A driver with a 2-CPU Ray instance of its own: three ranks per run are refused before anything
# starts, then the two-rank study runs on it as Ray tasks.
RAY_DRIVER = """
import json, sys
from pathlib import Path
import ray
from forgetlab.config import ConfigError
from forgetlab.experiments import run_experiment
study, out = json.loads(sys.argv[1]), Path(sys.argv[2])
ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
try:
    run_experiment({**study, "devices_per_run": 3}, out / "big", executor="ray", quiet=True)
except ConfigError as e:
    print(f"refused: {e}")
summary = run_experiment(study, out / "exp", executor="ray", quiet=True)
print(json.dumps({"finished": summary["finished"], "failed": summary["failed"]}))
"""


@pytest.mark.slow
def test_two_ranks_per_run_as_a_ray_task_equal_the_local_executor(
    ddp_study, ddp_local, ray_env, tmp_path
):
    """devices_per_run = 2 on a CPU-only Ray instance: each run is one task asking for a CPU per
    gloo rank (train.threads = 1), whose process starts torchrun's launcher; rank 0's outcome
    comes back, and the numbers are the local executor's."""
    res = subprocess.run(
        [sys.executable, "-c", RAY_DRIVER, json.dumps(ddp_study), str(tmp_path)],
        capture_output=True, text=True, env=ray_env, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (refused,) = [line for line in res.stdout.splitlines() if line.startswith("refused: ")]
    assert refused.startswith("refused: devices_per_run = 3: a run's ranks share one node, a CPU "
                              "each at least, and the largest node of the Ray cluster at ")  # fmt: skip
    assert refused.endswith(" has 2 CPUs; allowed: 1..2")
    assert not (tmp_path / "big").exists()
    assert json.loads(res.stdout.splitlines()[-1]) == {"finished": 1, "failed": []}
    frame = pd.read_parquet(tmp_path / "exp" / "results.parquet")
    same_numbers(pd.read_parquet(ddp_local / "results.parquet"), frame)
    record = json.loads((tmp_path / "exp" / "runs" / frame.run_id[0] / "run.json").read_text())
    assert record["timing"]["throughput"]["devices"] == 2


def test_address_is_refused_for_other_executors(study, tmp_path):
    with pytest.raises(ConfigError, match="--address = 'host:1' applies to --executor ray"):
        run_experiment(study, tmp_path / "exp", executor="local", address="host:1", quiet=True)
    assert not (tmp_path / "exp" / "runs").exists()


def slurm_study(study: dict[str, Any], **slurm: Any) -> dict[str, Any]:
    return {**study, "slurm": {"cluster": "local", "time": 10, "poll_s": 0.5, **slurm}}


@pytest.mark.slow
def test_a_submitit_array_job_equals_the_local_run_and_a_resubmission_skips_finished_runs(
    study, local_results, tmp_path
):
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    bad = {"model": {"block_size": 50000}}  # valid config, fails at run time
    raw = slurm_study(
        {**study, "factors": {"LR": {**study["factors"]["LR"], "bad": bad}}}
    )
    out = tmp_path / "exp"
    summary = run_experiment(raw, out, executor="slurm", workers=2, quiet=True)
    assert summary["finished"] == 2 and len(summary["failed"]) == 1
    frame = pd.read_parquet(out / "results.parquet")
    bad_row = frame[frame.group == "bad"].iloc[0]
    assert bad_row.status == "failed" and "block_size" in bad_row.error
    same_numbers(local_results, frame[frame.group != "bad"])
    jobs = json.loads((out / "logs" / "slurm" / "jobs.json").read_text())
    assert jobs["cluster"] == "local" and set(jobs["jobs"]) == set(frame.run_id)
    stamps = {i: (out / "runs" / i / "run.json").stat().st_mtime_ns for i in frame.run_id
              if i != bad_row.run_id}  # fmt: skip
    again = run_experiment(raw, out, executor="slurm", workers=2, quiet=True)
    assert again["skipped_finished"] == 2 and again["ran"] == 1  # only the failed run resubmitted
    assert {i: (out / "runs" / i / "run.json").stat().st_mtime_ns for i in stamps} == stamps


@pytest.mark.slow
def test_a_slurm_task_killed_without_a_result_is_recorded_as_failed(study, tmp_path):
    """The task's shell gets a 1 s CPU limit (a setup line), so the kernel kills it while it
    imports torch: no result file, and the study records why."""
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    raw = slurm_study({**study, "factors": {"LR": {"lo": {}}}}, setup=["ulimit -t 1"])
    summary = run_experiment(raw, tmp_path / "exp", executor="slurm", quiet=True)
    (run_id,) = summary["failed"]
    assert "ended without a result" in summary["errors"][run_id]
    assert str(tmp_path / "exp" / "logs" / "slurm") in summary["errors"][run_id]


@pytest.mark.slow
def test_two_ranks_per_run_as_a_submitit_task_equal_the_local_executor(
    ddp_study, ddp_local, tmp_path
):
    """devices_per_run = 2 through submitit's local executor: one array task per run, whose
    process starts torchrun's launcher (slurm.gpus = 0: gloo ranks on its CPUs)."""
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    out = tmp_path / "exp"
    summary = run_experiment(slurm_study(ddp_study), out, executor="slurm", quiet=True)
    assert summary["finished"] == 1 and summary["failed"] == [], summary
    frame = pd.read_parquet(out / "results.parquet")
    same_numbers(pd.read_parquet(ddp_local / "results.parquet"), frame)
    record = json.loads((out / "runs" / frame.run_id[0] / "run.json").read_text())
    assert record["timing"]["throughput"]["devices"] == 2


def rank_pid(processes: Any, root: Path, rank: int) -> int | None:
    """The torchrun rank ``rank`` among the processes whose command line names ``root``."""
    for pid in processes.naming(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_killed_rank_fails_its_run_with_a_readable_error(ddp_study, tmp_path, processes):
    """SIGKILL rank 1 of a two-rank run in a submitit task once rank 0 trains: torchrun stops
    rank 0, and the study ends with the run failed, naming the rank, the signal and the log."""
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    endless = copy.deepcopy(ddp_study)
    endless["base"]["train"]["steps_per_stage"] = 100_000
    out = tmp_path / "exp"
    summary: dict[str, Any] = {}

    def study() -> None:
        summary.update(run_experiment(slurm_study(endless), out, executor="slurm", quiet=True))

    orchestrator = threading.Thread(target=study)
    orchestrator.start()
    try:
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert orchestrator.is_alive() and time.monotonic() < deadline, summary
            runs = list((out / "runs").iterdir()) if (out / "runs").is_dir() else []
            if runs and holder(runs[0]).get("pid"):  # rank 0 holds the run directory: it trains
                victim = rank_pid(processes, out, 1)
            time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        orchestrator.join(timeout=120)
        assert not orchestrator.is_alive(), "the study still waits after a rank of its run died"
    finally:
        for pid in processes.naming(out):  # whatever a failed assertion left running
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        orchestrator.join()
    (run_id,) = summary["failed"]
    error = summary["errors"][run_id]
    assert "rank 1 was killed by SIGKILL (of 2 ranks)" in error, error
    assert str(out / "logs" / f"{run_id}.log") in error
    assert processes.wait_dead(processes.naming(out / "runs")) == []  # launcher and ranks gone


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"devices_per_run": 2, "slurm": {"gpus": 1}},
         "slurm.gpus = 1 contradicts devices_per_run = 2: a run's ranks take a GPU each, or train "
         "on CPUs; allowed: 0 or 2"),
        ({"devices_per_run": 4, "cpus_per_run": 2},
         "cpus_per_run = 2 is less than devices_per_run = 4: the run's CPUs are shared among its "
         "ranks, a CPU each at least; allowed: >= 4"),
    ],
)  # fmt: skip
def test_resources_that_contradict_the_ranks_per_run_are_refused(study, extra, message):
    with pytest.raises(ConfigError, match="invalid experiment spec") as e:
        load_spec({**study, **extra})
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("slurm", "message"),
    [
        ({"time": "4h"}, "slurm.time = '4h': time = '4h': allowed: minutes"),
        ({"gpus": 2}, "slurm.gpus = 2"),
        ({"partiton": "gpu"}, "unknown key 'slurm.partiton'"),
        ({"cluster": "pbs"}, "slurm.cluster = 'pbs'"),
    ],
)
def test_bad_slurm_options_are_one_line_errors_naming_the_key(study, slurm, message):
    with pytest.raises(ConfigError, match="invalid experiment spec") as e:
        load_spec({**study, "slurm": slurm})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_slurm_without_sbatch_names_the_local_alternative(study, tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit is an optional extra: forgetlab[slurm]")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match=r"no `sbatch` on this machine's PATH.*cluster = 'local'"):
        run_experiment(study, tmp_path / "exp", executor="slurm", quiet=True)


def test_the_slurm_options_become_the_array_jobs_sbatch_lines(study, tmp_path, monkeypatch):
    """What sbatch reads: every [slurm] key, memory in MB (Slurm reads a bare number as MB),
    the time limit in minutes, the array throttle from --workers, and for two ranks per run a
    GPU each and cpus_per_run shared among them (the task asks for the threads of both)."""
    submitit = pytest.importorskip("submitit", reason="submitit: forgetlab[slurm]")
    from forgetlab.experiments import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    spec, _ = load_spec({**study, "cpus_per_run": 9, "devices_per_run": 2, "slurm": {
        "partition": "gpu", "time": "1-02:30:00", "gpus": 2, "mem_gb": 32, "account": "lab",
        "qos": "high", "setup": ["module load cuda"], "sbatch": {"exclude": "node07"},
    }})  # fmt: skip
    from forgetlab.experiments.executors import make_executor

    ex = make_executor("slurm", 4, tmp_path, spec.devices_per_run, cpus_per_run=spec.cpus_per_run,
                       slurm=spec.slurm, study=spec.name)  # fmt: skip
    assert ex.resources_for([]) == (8, 4)  # 9 CPUs: 4 threads for each of the 2 ranks
    sbatch = ex._executor(8)
    assert isinstance(sbatch, submitit.SlurmExecutor)
    assert sbatch.parameters["array_parallelism"] == 4  # --workers: tasks at once
    text = sbatch._make_submission_file_text("CMD", "uid")
    for line in ("--partition=gpu", "--time=1590", "--gpus-per-node=2", "--mem=32768M",
                 "--account=lab", "--qos=high", "--exclude=node07", "--cpus-per-task=8",
                 "--job-name=forgetlab-clusters", "module load cuda"):  # fmt: skip
        assert line in text, (line, text)


def test_a_single_run_spec_refuses_a_cluster_executor(study, tmp_path):
    spec = write_study(tmp_path / "one.toml", {"name": "one", **study["base"]})
    res = forgetlab("run", str(spec), "--executor", "ray", "--address", "h:1", "--out",
                    str(tmp_path / "run"), env={**os.environ})  # fmt: skip
    assert res.returncode == 2
    assert "--executor/--address apply to study specs" in res.stderr
    assert not (tmp_path / "run").exists()
