"""Run one planned run: the functions every executor calls, and the worker process's CLI entry.

``python -m forgetlab.experiments.worker --config C.json --out RUN_DIR --threads N --result R.json``
is a run in a fresh process (its own thread count, its own ``CUDA_VISIBLE_DEVICES``, and a crash
that cannot take its caller down); :func:`start_worker` starts one and returns its outcome. With
``--nproc N`` (N > 1) the process is torchrun's launcher for the run's N ranks, each of them this
module again, and the trainer trains data-parallel (``forgetlab.train.distributed``).

Every executor goes through here: the local executor starts a worker process for each run
(:func:`start_worker`); a Ray task or a Slurm array task, already placed with the resources of
all of its run's ranks, calls :func:`run_ranks`, which trains in the task's own process for one
rank and starts the launcher as its child for more.

A worker dies with the process that started it (:func:`die_with_parent`): a study killed with
``kill -9`` leaves no worker training on, and no second writer when the study is started again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure


def run_one(
    config: dict[str, Any], run_dir: str, threads: int | None = None, lock_wait: float = 0.0
) -> dict[str, Any]:
    """Train (or resume) one run; never raises for a failed run, it returns the outcome.
    ``lock_wait``: seconds to wait for another process writing ``run_dir`` (a shared base)."""
    t0 = time.perf_counter()
    try:
        import torch

        from forgetlab.config import RunConfig
        from forgetlab.train.launch import train_once

        if threads:
            torch.set_num_threads(threads)
        cfg = RunConfig.model_validate(config)
        if not train_once(cfg, run_dir, progress=False, lock_wait=lock_wait):
            return {"status": "finished", "error": None, "seconds": 0.0, "skipped": True}
        return {"status": "finished", "error": None, "seconds": time.perf_counter() - t0}
    except Exception as e:
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0}


PARENT_ENV = "FORGETLAB_PARENT_PID"  # the pid a worker must die with, set by whoever starts it
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Set in the child itself, after exec, so no ``preexec_fn`` runs between fork and exec in a
    threaded parent. The kernel sends the signal when the *thread* that forked this process ends;
    the local executor starts each worker from a pool thread that waits for it, so that thread
    outlives the worker. If the parent died before the call (the process was already re-parented),
    ``PARENT_ENV`` no longer names the parent and the worker exits at once. Elsewhere than Linux
    this does nothing: killing the orchestrator there leaves its workers to finish.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        logging.getLogger("forgetlab.experiments").warning(
            "prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker outlives a killed parent",
            ctypes.get_errno(),
        )
        return
    expected = os.environ.get(PARENT_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(3)  # orphaned before the call: the process that wanted this run is gone


def launch_ranks(nproc: int, argv: list[str], result: str) -> int:
    """Start the run's ``nproc`` ranks under torchrun, its launcher running in this process (so
    it dies with whoever started it, like any worker, and its ranks die with it). When a rank
    fails, torchrun stops the others; the outcome at ``result`` then names the ranks that failed
    (rank 0's own error alone may only say that a peer closed its connection)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ[PARENT_ENV] = str(os.getpid())
    t0 = time.perf_counter()
    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "forgetlab.experiments.worker", *argv])
    except ChildFailedError as e:
        report_failed_ranks(Path(result), e.failures, nproc, time.perf_counter() - t0)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the launcher itself failed (e.g. its rendezvous)
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def report_failed_ranks(
    result: Path, failures: Mapping[int, ProcessFailure], nproc: int, seconds: float
) -> None:
    """Write the run's failed outcome naming the ranks torchrun saw fail: rank 0's error with the
    other ranks' failures before it, or, when rank 0 reported nothing (killed, or stopped by
    torchrun after a peer failed), the failures alone. A finished rank 0 stays finished: it
    wrote the whole run before another rank failed."""
    from forgetlab.atomic import atomic_write_json

    def why(rank: int, failure: ProcessFailure) -> str:
        how = (
            f"was killed by {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        return f"rank {rank} {how}"

    outcome = json.loads(result.read_text()) if result.exists() else None
    others = [why(r, f) for r, f in sorted(failures.items()) if r != 0]
    if outcome is None:
        failed = "; ".join(why(r, f) for r, f in sorted(failures.items()))
        outcome = {
            "status": "failed",
            "seconds": seconds,
            "error": f"{failed} (of {nproc} ranks) before rank 0 reported an outcome",
        }
    elif outcome["status"] == "failed" and others:
        outcome["error"] = f"{'; '.join(others)} (of {nproc} ranks); rank 0: {outcome['error']}"
    else:
        return
    atomic_write_json(result, outcome)


# What an enclosing torchrun sets: a worker started with it would take itself for a rank.
OUTER_RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_worker(
    config: dict[str, Any],
    run_dir: str,
    stem: str | Path,
    *,
    threads: int,
    nproc: int = 1,
    lock_wait: float = 0.0,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run one run in a fresh worker process (``nproc`` > 1: torchrun's launcher of its ranks,
    ``threads`` each) and wait for it; return rank 0's outcome, or a failed one naming the exit
    code when the process ended without one. A failed outcome names the process's log.

    ``stem``: the path prefix of the run's files beside the study (``STEM.config.json``,
    ``STEM.result.json``, ``STEM.log``, the process's output, appended to on every attempt).
    ``env``: variables for the process on top of this one's (e.g. ``CUDA_VISIBLE_DEVICES``).
    The process dies with the thread that calls this (:func:`die_with_parent`), which waits.
    """
    from forgetlab.atomic import atomic_write_json

    config_path, result, log_path = (
        Path(f"{stem}{suffix}") for suffix in (".config.json", ".result.json", ".log")
    )
    config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config_path, config)
    result.unlink(missing_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k not in OUTER_RANK_ENV}
    child_env.update({"OMP_NUM_THREADS": str(threads), PARENT_ENV: str(os.getpid())})
    child_env.update(env or {})
    cmd = [
        sys.executable, "-m", "forgetlab.experiments.worker", "--config", str(config_path),
        "--out", run_dir, "--threads", str(threads), "--result", str(result),
        "--nproc", str(nproc), "--lock-wait", str(lock_wait),
    ]  # fmt: skip
    t0 = time.perf_counter()
    with log_path.open("a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env).returncode
    if result.exists():
        outcome: dict[str, Any] = json.loads(result.read_text())
    else:
        outcome = {
            "status": "failed",
            "seconds": time.perf_counter() - t0,
            "error": f"worker process exited with code {code} before reporting",
        }
    error = (outcome.get("error") or "").rstrip()
    if outcome["status"] == "failed" and str(log_path) not in error:
        sep = "\n" if "\n" in error else "; "  # a traceback gets the log on a line of its own
        outcome["error"] = f"{error}{sep}see {log_path}"
    return outcome


def run_ranks(
    config: dict[str, Any],
    run_dir: str,
    threads: int,
    lock_wait: float = 0.0,
    nproc: int = 1,
    stem: str | None = None,
) -> dict[str, Any]:
    """One run with ``nproc`` ranks of ``threads`` each, from inside a task a scheduler already
    placed with the resources of all of them (a Ray task, a Slurm array task). One rank trains
    in this process (:func:`run_one`); more run under torchrun's launcher, started as this
    process's child that dies with it (:func:`start_worker`, files at ``stem``), and rank 0's
    outcome is returned. Never raises for a failed run."""
    if nproc == 1:
        return run_one(config, run_dir, threads, lock_wait)
    if stem is None:
        raise ValueError(f"nproc = {nproc}: run_ranks needs a stem for the launcher's files")
    return start_worker(
        config, run_dir, stem, threads=threads, nproc=nproc, lock_wait=lock_wait
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the resolved RunConfig as JSON")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--result", required=True, help="where the outcome JSON is written")
    parser.add_argument("--nproc", type=int, default=1, help="ranks (torchrun) for this run")
    parser.add_argument(
        "--lock-wait", type=float, default=0.0, help="seconds to wait for another writer (inf)"
    )
    args = parser.parse_args(argv)
    die_with_parent()
    # the pid in every line: one run directory's log must show one writer at a time
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    if args.nproc > 1 and "RANK" not in os.environ:
        rest = list(sys.argv[1:] if argv is None else argv)
        i = rest.index("--nproc")
        return launch_ranks(args.nproc, rest[:i] + rest[i + 2 :], args.result)
    with open(args.config) as f:
        config = json.load(f)
    outcome = run_one(config, args.out, args.threads, args.lock_wait)
    from forgetlab.atomic import atomic_write_json

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 reports for the group
        atomic_write_json(args.result, outcome)
    if outcome["error"]:
        print(outcome["error"], file=sys.stderr)
    return 0 if outcome["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
