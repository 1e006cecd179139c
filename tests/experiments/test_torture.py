"""The kill -9 torture test: a study's orchestrator (a real `forgetlab run STUDY --workers 2`
process) is killed with SIGKILL at seeded random points, over and over, and started again each
time; the study it ends with must equal an uninterrupted one, number for number and weight for
weight, with no worker outliving its killed orchestrator, no run directory written by two
processes at once, and no temp file left.

Kill points are drawn from three kinds, so that kills land everywhere: a delay after the start
(imports, data checks, experiment.json, the workers' start), a delay after a worker process
appeared (its imports, lock, clean-up, first evaluation), and just after the k-th new checkpoint
(mid-stage, at stage ends, after a run finished while another trains). ``FORGETLAB_TORTURE_KILLS``
sets the number of kills (the default keeps the suite fast on a 2-core machine; the issue's
probe ran 50+), ``FORGETLAB_TORTURE_SEED`` the seed.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from forgetlab.atomic import is_temp
from forgetlab.experiments import run_experiment
from forgetlab.locks import LOCK_FILE
from micro_run import runs_in_this_process, write_toml

KILLS = int(os.environ.get("FORGETLAB_TORTURE_KILLS", "4"))
SEED = int(os.environ.get("FORGETLAB_TORTURE_SEED", "0"))
ROUND_LIMIT_S = 300  # a round whose kill point never comes is a hang: fail, do not wait forever
TIMING = re.compile(r"wall|_s$|tokens_per_s|mfu|peak|seconds|time")  # differ run to run
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\d+) forgetlab")


def study_spec(micro_base, steps: int) -> dict:
    base = micro_base(domains=2, steps=steps)
    base["train"].update(checkpoint_every=1, eval_every=steps // 2)
    return {
        "name": "torture",
        "base": base,
        "factors": {
            "LR": {"lo": {}, "hi": {"train": {"lr": 3e-3}}, "long": {"train": {"lr": 2e-3}}},
        },
        "seeds": [0],
    }


def checkpoints(study: Path) -> set[str]:
    return {str(p) for p in study.glob("runs/*/checkpoints/step-*")}


def kill_point(rng: random.Random) -> tuple[str, float, int]:
    """(kind, seconds, checkpoints): when to kill the next invocation."""
    kind = rng.choices(["start", "worker", "checkpoint"], weights=[3, 3, 4])[0]
    if kind == "start":
        return kind, rng.uniform(0.2, 6.0), 0
    if kind == "worker":
        return kind, rng.uniform(0.0, 4.0), 0
    return kind, rng.uniform(0.0, 0.3), rng.randint(1, 3)


def kill_round(cmd: list[str], out: Path, point: tuple[str, float, int], processes) -> dict:
    """Start the study, kill it at ``point``; what the kill hit and who outlived it."""
    kind, seconds, k = point
    seen = checkpoints(out)
    t0 = time.monotonic()
    orchestrator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    armed_at = t0 if kind == "start" else None
    while orchestrator.poll() is None:
        assert time.monotonic() - t0 < ROUND_LIMIT_S, f"kill point {point} never came"
        if armed_at is None:
            worker_up = kind == "worker" and any(p != orchestrator.pid for p in processes.naming(out))
            saved = kind == "checkpoint" and len(checkpoints(out) - seen) >= k
            if worker_up or saved:
                armed_at = time.monotonic()
        if armed_at is not None and time.monotonic() - armed_at >= seconds:
            break
        time.sleep(0.01)
    else:
        return {"kind": kind, "killed": False, "workers": 0, "survivors": []}
    workers = [p for p in processes.naming(out) if p != orchestrator.pid]
    orchestrator.send_signal(signal.SIGKILL)
    orchestrator.wait()
    survivors = processes.wait_dead(sorted({*workers, *processes.naming(out)}), within=20)
    for pid in survivors:  # say what outlived its orchestrator, then stop it
        print(f"survivor of a {point} kill: {pid} {processes.describe(pid)}")
        os.kill(pid, signal.SIGKILL)
    return {"kind": kind, "killed": True, "workers": len(workers), "survivors": survivors}


def writers_in_turn(log: Path) -> bool:
    """A run's log, appended by every process that ever wrote the run: each pid's lines must be
    one unbroken block (two live writers would interleave theirs)."""
    finished: set[str] = set()
    current = None
    for line in (log.read_text() if log.exists() else "").splitlines():
        if (m := LOG_LINE.match(line)) is None:
            continue
        pid = m.group(1)
        if pid != current:
            if pid in finished:
                return False
            if current is not None:
                finished.add(current)
            current = pid
    return True


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if not TIMING.search(c)]
    return frame[keep].sort_values("run_id").reset_index(drop=True)


@pytest.mark.slow
def test_a_study_killed_again_and_again_ends_equal_to_an_uninterrupted_one(
    micro_base, tmp_path, processes
):
    raw = study_spec(micro_base, steps=max(6, KILLS))  # enough work for KILLS kill points
    spec = write_toml(tmp_path / "torture.toml", raw)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "forgetlab.cli.main", "run", str(spec), "--out", str(out),
           "--workers", "2", "--quiet"]
    rng = random.Random(SEED)
    rounds = []
    t0 = time.monotonic()
    for _ in range(KILLS):
        rounds.append(kill_round(cmd, out, kill_point(rng), processes))
        if not rounds[-1]["killed"]:
            break  # the study finished before this kill point came
    print(f"\ntorture: {sum(r['killed'] for r in rounds)} kills in {time.monotonic() - t0:.0f}s, "
          f"{sum(r['workers'] > 0 for r in rounds)} with workers running, "
          f"{sum(len(r['survivors']) for r in rounds)} orphaned workers; by kind: "
          f"{Counter(r['kind'] for r in rounds if r['killed'])}")

    # The last start runs to the end, and the reference study runs without a kill; both train
    # their runs in this process (one at a time: the trainer seeds process-wide generators),
    # which saves a dozen interpreter starts and computes the same numbers.
    with runs_in_this_process():
        summary = run_experiment(raw, out, workers=1, quiet=True)
        reference = tmp_path / "uninterrupted"
        run_experiment(raw, reference, workers=1, quiet=True)

    assert [r["survivors"] for r in rounds if r["survivors"]] == []
    assert sum(r["killed"] for r in rounds) >= min(KILLS, 3)
    assert summary["failed"] == [] and summary["finished"] == 3
    pd.testing.assert_frame_equal(
        comparable(pd.read_parquet(out / "results.parquet")),
        comparable(pd.read_parquet(reference / "results.parquet")),
    )
    for run in sorted((reference / "runs").iterdir()):
        mine = out / "runs" / run.name
        a, b = (json.loads((d / "run.json").read_text()) for d in (mine, run))
        assert a["status"] == "finished"
        assert (a["R"], a["metrics"], a["flops"], a["tokens"]) == (
            b["R"], b["metrics"], b["flops"], b["tokens"]
        ), run.name
        wa, wb = (load_file(d / "checkpoints" / "latest" / "model.safetensors") for d in (mine, run))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa), run.name
        assert writers_in_turn(out / "logs" / f"{run.name}.log"), run.name
    assert [p for p in out.rglob("*") if is_temp(p.name) or p.name == LOCK_FILE] == []
    assert processes.naming(out) == []
