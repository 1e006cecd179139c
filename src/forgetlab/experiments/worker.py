"""Run one planned run in this process: the function every executor calls, and its CLI entry.

``python -m forgetlab.experiments.worker --config C.json --out RUN_DIR --threads N --result R.json``
is how the local executor starts a run in a fresh process (its own thread count, its own
``CUDA_VISIBLE_DEVICES``, and a crash that cannot take the orchestrator down); Ray tasks call
:func:`run_one` directly. With ``--nproc N`` (N > 1) the process is torchrun's launcher for the
run's N ranks, each of them this module again.

A worker dies with the process that started it (:func:`die_with_parent`): a study killed with
``kill -9`` leaves no worker training on, and no second writer when the study is started again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from typing import Any


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


def launch_ranks(nproc: int, argv: list[str]) -> int:
    """Start the run's ``nproc`` ranks under torchrun, its launcher running in this process (so
    it dies with the orchestrator like any worker, and its ranks die with it)."""
    from torch.distributed.run import main as torchrun

    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "forgetlab.experiments.worker", *argv])
    except Exception as e:  # a rank failed: torchrun's ChildFailedError names it
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


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
        return launch_ranks(args.nproc, rest[:i] + rest[i + 2 :])
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
