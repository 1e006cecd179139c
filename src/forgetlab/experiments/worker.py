"""Run one planned run in this process: the function every executor calls, and its CLI entry.

``python -m forgetlab.experiments.worker --config C.json --out RUN_DIR --threads N --result R.json``
is how the local executor starts a run in a fresh process (its own thread count, its own
``CUDA_VISIBLE_DEVICES``, and a crash that cannot take the orchestrator down); Ray tasks call
:func:`run_one` directly.
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


def run_one(config: dict[str, Any], run_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run; never raises for a failed run, it returns the outcome."""
    t0 = time.perf_counter()
    try:
        import torch

        from forgetlab.config import RunConfig
        from forgetlab.train import RunDir, Trainer

        if threads:
            torch.set_num_threads(threads)
        cfg = RunConfig.model_validate(config)
        if RunDir(run_dir).status() == "finished":
            return {"status": "finished", "error": None, "seconds": 0.0, "skipped": True}
        Trainer(cfg, run_dir, progress=False).run()
        return {"status": "finished", "error": None, "seconds": time.perf_counter() - t0}
    except Exception as e:
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the resolved RunConfig as JSON")
    parser.add_argument("--out", required=True, help="the run directory")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--result", required=True, help="where the outcome JSON is written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(args.config) as f:
        config = json.load(f)
    outcome = run_one(config, args.out, args.threads)
    from forgetlab.atomic import atomic_write_json

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 reports for the group
        atomic_write_json(args.result, outcome)
    if outcome["error"]:
        print(outcome["error"], file=sys.stderr)
    return 0 if outcome["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
