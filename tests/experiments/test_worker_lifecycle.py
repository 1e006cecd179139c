"""A study's processes: a worker dies with its killed orchestrator, a study directory another
process holds is refused (and taken over once that process died), a run directory another process
holds is not started, stale temp files are removed, and a user's OMP_NUM_THREADS is respected."""

import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from forgetlab.config import ConfigError, resolve_run_config
from forgetlab.experiments import expand, load_spec, run_experiment
from forgetlab.experiments.executors import LocalExecutor
from forgetlab.locks import LOCK_FILE, DirectoryInUse, DirectoryLock, holder

# The orchestrator's own code path: a LocalExecutor starting the worker from its pool thread.
ORCHESTRATOR = """
import json, sys
from pathlib import Path
from forgetlab.experiments.executors import LocalExecutor, RunTask
config, run_dir, work, ranks = sys.argv[1:]
task = RunTask("orphan", json.loads(Path(config).read_text()), run_dir)
executor = LocalExecutor(1, Path(work), devices=[], devices_per_run=int(ranks))
executor.run([task], lambda t: None, lambda t, o: None)
"""


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_worker_dies_with_its_killed_orchestrator(micro_base, tmp_path, processes, ranks):
    """With 2 ranks the worker is torchrun's launcher: it and both ranks must die."""
    cfg = resolve_run_config({**micro_base(domains=2, steps=100_000), "name": "orphan"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    run_dir = tmp_path / "run"
    parent = subprocess.Popen([
        sys.executable, "-c", ORCHESTRATOR, str(config), str(run_dir), str(tmp_path / "logs"),
        str(ranks),
    ])
    worker = None
    deadline = time.monotonic() + 120
    while worker is None and time.monotonic() < deadline and parent.poll() is None:
        pid = holder(run_dir).get("pid")  # the worker holds its run directory once it trains
        worker = pid if pid not in (None, parent.pid) else None
        time.sleep(0.05)
    assert worker is not None, (tmp_path / "logs" / "orphan.log").read_text()
    workers = [p for p in processes.naming(run_dir) if p != parent.pid]
    assert len(workers) == (1 if ranks == 1 else 1 + ranks) and worker in workers

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert processes.wait_dead(workers) == []
    # and its lock went with it (its main thread shows dead a moment before the last of its
    # threads releases the process's files)
    with DirectoryLock(run_dir, wait=10):
        pass


def test_a_held_study_is_refused_and_a_held_run_is_not_started(
    micro_base, tmp_path, lock_holder, monkeypatch
):
    raw = {"name": "held", "base": micro_base(domains=2, steps=2), "factors": {"LR": {"lo": {}}}}
    out = tmp_path / "exp"
    study = lock_holder(out)
    with pytest.raises(DirectoryInUse, match=rf"study directory '{out}' is in use by process "
                                             rf"{study.pid} on this host"):
        run_experiment(raw, out, quiet=True)
    assert not (out / "experiment.json").exists()

    study.kill()  # the first orchestrator was killed: its lock is stale
    study.wait()
    (run,) = expand(load_spec(raw)[0])
    run_owner = lock_holder(out / "runs" / run.run_id)  # e.g. a `forgetlab run` on that directory
    (out / "logs").mkdir()
    stale = [out / ".experiment.json.a1b2c3.tmp", out / "logs" / f".{run.run_id}.result.json.d4.tmp"]
    for path in stale:
        path.write_text("{")
    monkeypatch.setattr(LocalExecutor, "lock_wait", 0.2)

    summary = run_experiment(raw, out, quiet=True)

    assert summary["failed"] == [run.run_id]
    assert f"in use by process {run_owner.pid}" in summary["errors"][run.run_id]
    assert not (out / "logs" / f"{run.run_id}.log").exists()  # no worker was started
    assert not (out / "runs" / run.run_id / "run.json").exists()
    assert [p for p in stale if p.exists()] == []
    assert not (out / LOCK_FILE).exists()


def test_a_user_set_omp_num_threads_is_respected(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with caplog.at_level(logging.INFO):
        assert LocalExecutor(2, tmp_path, devices=[]).threads == 4  # unset: the cores, shared
    assert "set OMP_NUM_THREADS to choose" in caplog.text

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert LocalExecutor(2, tmp_path, devices=[]).threads == 3
    assert "OMP_NUM_THREADS = 3 is set: each run process uses 3 thread(s)" in caplog.text

    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ConfigError, match=r"OMP_NUM_THREADS = 'many' .* allowed: an integer >= 1"):
        LocalExecutor(2, tmp_path, devices=[])
