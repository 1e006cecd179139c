"""Executors: where runs execute. Both call the same :func:`worker.run_one` and report through
the same two callbacks, so the runner does not know which one it drives.

* ``local``: ``workers`` runs at a time, each in a fresh process (``python -m
  forgetlab.experiments.worker``). On the CPU each gets ``cores // workers`` threads; with CUDA
  devices each worker owns ``devices_per_run`` devices through ``CUDA_VISIBLE_DEVICES`` (so
  ``device = "auto"`` or ``"cuda"`` in the config is that device) and ``workers`` is capped at
  what the devices allow. With ``devices_per_run > 1`` the worker is started under ``torchrun``
  and the trainer trains data-parallel (``forgetlab.train.distributed``).
* ``ray``: every run is a Ray task with a resource request (``num_cpus``, ``num_gpus``), so a
  cluster (``RAY_ADDRESS``) scales the study with no code change; without an address a local Ray
  instance is started. Run directories must be on a filesystem the Ray nodes share.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetlab.config import ConfigError


@dataclass(frozen=True)
class RunTask:
    run_id: str
    config: dict[str, Any]  # the resolved RunConfig, as JSON
    run_dir: str


Outcome = dict[str, Any]  # {"status": "finished" | "failed", "error": str | None, "seconds": float}
OnStart = Callable[[RunTask], None]
OnDone = Callable[[RunTask, Outcome], None]


def cuda_devices() -> list[str]:
    """The CUDA devices this process may use (respecting an outer CUDA_VISIBLE_DEVICES)."""
    import torch

    if not torch.cuda.is_available():
        return []
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in outer.split(",")] if outer else None
    return [ids[i] if ids else str(i) for i in range(torch.cuda.device_count())]


class LocalExecutor:
    """Runs on this machine, one process per run, ``workers`` at a time."""

    name = "local"

    def __init__(
        self,
        workers: int,
        work_dir: Path,
        devices: list[str] | None = None,
        devices_per_run: int = 1,
    ) -> None:
        self.devices = cuda_devices() if devices is None else devices
        self.per_run = devices_per_run
        if self.devices and len(self.devices) < devices_per_run:
            raise ConfigError(
                f"devices_per_run = {devices_per_run} but only {len(self.devices)} CUDA devices "
                f"are visible; allowed: 1..{len(self.devices)}"
            )
        slots = len(self.devices) // devices_per_run if self.devices else workers
        self.workers = max(1, min(workers, slots))
        processes = self.workers * (devices_per_run if not self.devices else 1)
        self.threads = max(1, (os.cpu_count() or 1) // processes)
        self.work_dir = work_dir

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None:
        slots: queue.Queue[int] = queue.Queue()
        for i in range(self.workers):
            slots.put(i)

        def one(task: RunTask) -> None:
            slot = slots.get()
            try:
                on_start(task)
                on_done(task, self._subprocess(task, slot))
            finally:
                slots.put(slot)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for future in [pool.submit(one, t) for t in tasks]:
                future.result()

    def _subprocess(self, task: RunTask, slot: int) -> Outcome:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stem = self.work_dir / task.run_id
        config, result, log = (
            stem.with_suffix(s) for s in (".config.json", ".result.json", ".log")
        )
        config.write_text(json.dumps(task.config))
        result.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        if self.devices:
            group = self.devices[slot * self.per_run : (slot + 1) * self.per_run]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
        launcher = [sys.executable]
        if self.per_run > 1:  # data-parallel: one process per device (gloo ranks on the CPU)
            launcher += ["-m", "torch.distributed.run", "--standalone"]
            launcher += [f"--nproc_per_node={self.per_run}"]
        cmd = [
            *launcher,
            "-m",
            "forgetlab.experiments.worker",
            "--config",
            str(config),
            "--out",
            task.run_dir,
            "--threads",
            str(self.threads),
            "--result",
            str(result),
        ]
        t0 = time.perf_counter()
        with log.open("a") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if result.exists():
            return json.loads(result.read_text())
        return {
            "status": "failed",
            "seconds": time.perf_counter() - t0,
            "error": f"worker process exited with code {code} before reporting; see {log}",
        }


class RayExecutor:
    """Runs as Ray tasks; the cluster's scheduler places them by their resource requests."""

    name = "ray"

    def __init__(self, workers: int, devices_per_run: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--executor = 'ray' needs Ray: pip install 'forgetlab[ray]'; allowed without it: "
                "local"
            ) from None
        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False
            )
        resources = ray.cluster_resources()
        self.num_cpus = max(1, int(resources.get("CPU", 1)) // max(1, workers))
        self.num_gpus = devices_per_run if resources.get("GPU", 0) else 0
        self.workers = max(1, int(resources.get("CPU", 1)) // self.num_cpus)
        self.ray = ray

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None:
        from forgetlab.experiments.worker import run_one

        remote = self.ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(
            run_one
        )
        pending = {}
        for (
            t
        ) in tasks:  # "running" under Ray means submitted: the cluster queues what it cannot place
            pending[remote.remote(t.config, t.run_dir, self.num_cpus)] = (t, time.perf_counter())
            on_start(t)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            task, t0 = pending.pop(done[0])
            try:
                outcome = self.ray.get(done[0])
            except Exception as e:  # the task's process died (OOM kill, node lost)
                outcome = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {e}",
                    "seconds": time.perf_counter() - t0,
                }
            on_done(task, outcome)


def make_executor(
    kind: str, workers: int, work_dir: Path, devices_per_run: int = 1
) -> LocalExecutor | RayExecutor:
    if workers < 1:
        raise ConfigError(f"--workers = {workers}: allowed: an integer >= 1")
    if kind == "local":
        return LocalExecutor(workers, work_dir, devices_per_run=devices_per_run)
    if kind == "ray":
        if devices_per_run != 1:
            raise ConfigError(
                f"devices_per_run = {devices_per_run} with --executor ray: a Ray task runs one "
                "process; use --executor local (torchrun) for several devices per run"
            )
        return RayExecutor(workers, devices_per_run)
    raise ConfigError(f"--executor = {kind!r} is not an executor; allowed: ['local', 'ray']")
