"""Executors: where runs execute. Each runs a run through the same functions of
:mod:`forgetlab.experiments.worker` and reports through the same two callbacks, so the runner
does not know which one it drives.

* ``local``: ``workers`` runs at a time, each in a fresh process (``python -m
  forgetlab.experiments.worker``) that dies with the orchestrator. On the CPU each gets
  ``cores // workers`` threads, or ``OMP_NUM_THREADS`` when the user set it; with CUDA
  devices each worker owns ``devices_per_run`` devices through ``CUDA_VISIBLE_DEVICES`` (so
  ``device = "auto"`` or ``"cuda"`` in the config is that device) and ``workers`` is capped at
  what the devices allow. With ``devices_per_run > 1`` the worker is torchrun's launcher and
  the trainer trains data-parallel (``forgetlab.train.distributed``). A run whose directory
  another live process holds (:mod:`forgetlab.locks`) is not started: after a short wait it is
  reported failed, naming that process.
* ``ray``: every run is a Ray task asking for the resources of all its ranks (a GPU each on a
  GPU cluster, their threads' CPUs), on a running cluster (``--address`` or ``RAY_ADDRESS``)
  or a fresh local instance.
* ``slurm`` (``forgetlab.experiments.slurm``): one Slurm array job per study, through submitit.

Under Ray and Slurm a run of several ranks starts torchrun's launcher inside its task, on one
node. Ray and Slurm need the run directories (and the data cache) on a filesystem every node
shares.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from forgetlab.config import ConfigError
from forgetlab.experiments.worker import start_worker
from forgetlab.locks import DirectoryInUse
from forgetlab.train.rundir import RunDir

log = logging.getLogger("forgetlab.experiments")

if TYPE_CHECKING:
    from forgetlab.experiments.slurm import SlurmExecutor, SlurmOptions


@dataclass(frozen=True)
class RunTask:
    run_id: str
    config: dict[str, Any]  # the resolved RunConfig, as JSON
    run_dir: str
    lock_wait: float = 0.0
    """Seconds the worker waits for another process writing run_dir (a base model another study
    may be training: the worker waits and then finds it finished); 0 refuses at once."""


Outcome = dict[str, Any]  # {"status": "finished" | "failed", "error": str | None, "seconds": float}
OnStart = Callable[[RunTask], None]
OnDone = Callable[[RunTask, Outcome], None]


class Executor(Protocol):
    """What the runner drives: ``workers`` runs at a time, each task's outcome reported."""

    name: str
    workers: int

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None: ...


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
    lock_wait = 5.0  # seconds a run directory held by another process is waited for

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
        self.threads = threads_per_process(processes)
        self.work_dir = work_dir

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None:
        slots: queue.Queue[int] = queue.Queue()
        for i in range(self.workers):
            slots.put(i)

        def one(task: RunTask) -> None:
            slot = slots.get()
            try:
                on_start(task)
                refused = None if task.lock_wait else held_elsewhere(task, self.lock_wait)
                on_done(task, refused or self._subprocess(task, slot))
            finally:
                slots.put(slot)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for future in [pool.submit(one, t) for t in tasks]:
                future.result()

    def _subprocess(self, task: RunTask, slot: int) -> Outcome:
        """The run in a worker process of its own (torchrun's launcher for several ranks: gloo
        ranks on the CPU, one per device with CUDA), on the devices of ``slot``."""
        env = {}
        if self.devices:
            group = self.devices[slot * self.per_run : (slot + 1) * self.per_run]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
        return start_worker(
            task.config,
            task.run_dir,
            self.work_dir / task.run_id,
            threads=self.threads,
            nproc=self.per_run,
            lock_wait=task.lock_wait,
            env=env,
        )


def threads_per_process(processes: int) -> int:
    """Threads for each of ``processes`` concurrent run processes: the user's
    ``OMP_NUM_THREADS`` when set, else an equal share of the cores."""
    share = max(1, (os.cpu_count() or 1) // processes)
    user = os.environ.get("OMP_NUM_THREADS")
    if user is None or not user.strip():
        log.info(
            "%d thread(s) per run process (%d cores / %d processes; set OMP_NUM_THREADS to choose)",
            share, os.cpu_count() or 1, processes,
        )
        return share
    try:
        threads = int(user)
        if threads < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"OMP_NUM_THREADS = {user!r} is not a thread count; allowed: an integer >= 1, or unset"
        ) from None
    log.info(
        "OMP_NUM_THREADS = %d is set: each run process uses %d thread(s) (unset, it would get %d)",
        threads, threads, share,
    )
    return threads


def rank_threads(
    cpus_per_run: int | None, threads: int | None, default: int, ranks: int
) -> int:
    """Threads of each of a run's ``ranks`` processes on a cluster, whose task asks for ranks x
    that many CPUs: the study's ``cpus_per_run`` shared among the ranks, else the run's
    ``train.threads``, else ``default``."""
    if cpus_per_run:
        return max(1, cpus_per_run // ranks)
    return max(1, int(threads or default))


def held_elsewhere(task: RunTask, wait: float) -> Outcome | None:
    """A failed outcome, without starting the run, when another live process holds its directory
    for longer than ``wait`` seconds (the worker still locks it itself for the whole run)."""
    t0 = time.perf_counter()
    try:
        with RunDir(task.run_dir).lock(wait):
            return None
    except DirectoryInUse as e:
        log.warning("run %s not started: %s", task.run_id, e)
        return {"status": "failed", "error": str(e), "seconds": time.perf_counter() - t0}


class RayExecutor:
    """Runs as Ray tasks; the cluster's scheduler places them by their per-run resource requests.

    ``address``: a running cluster (``host:port`` or ``auto``; default ``RAY_ADDRESS``), or
    ``local`` (the default when neither names one) for a fresh instance on this machine, started
    even when ``ray start`` left a cluster file behind. Connecting never passes ``num_cpus``: Ray
    refuses it for an existing cluster, whose nodes declare their own resources.

    Each run asks for the resources of all its ``devices_per_run`` ranks, on one node: a GPU
    each when the cluster has GPUs, and their threads' CPUs (:func:`rank_threads`: the study's
    ``cpus_per_run`` shared among them, else the run's ``train.threads``, else the largest
    node's CPUs // (``workers`` x ranks) each; never more than the largest node has, or it
    could never be placed). A run that no node can hold is refused before anything starts.
    Token authentication: when ``RAY_AUTH_MODE`` is unset and a token is available
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), it is sent, as Ray
    itself does for a cluster it finds on its own; a cluster without authentication ignores it.
    """

    name = "ray"

    def __init__(
        self,
        workers: int,
        work_dir: Path,
        devices_per_run: int = 1,
        cpus_per_run: int | None = None,
        address: str | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--executor = 'ray' needs Ray: pip install 'forgetlab[ray]'; allowed without it: "
                "local"
            ) from None
        self.ray = ray
        self.work_dir = work_dir.absolute()  # a multi-rank run's launcher files, on any node
        self.ranks = devices_per_run
        self.address = address or os.environ.get("RAY_ADDRESS") or "local"
        self.owned = not ray.is_initialized()  # connected here, so shut down here
        if self.owned:
            self._connect()
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.node_cpus = max(int(r.get("CPU", 0)) for r in nodes) if nodes else 1
        self.has_gpus = any(r.get("GPU", 0) for r in nodes)
        try:
            self._check_ranks_fit(nodes)
            if cpus_per_run is not None and cpus_per_run > self.node_cpus:
                raise ConfigError(
                    f"cpus_per_run = {cpus_per_run} but the largest node of the Ray cluster at "
                    f"{self.address!r} has {self.node_cpus} CPUs; allowed: 1..{self.node_cpus}"
                )
        except ConfigError:
            if self.owned:  # a refused study leaves no Ray instance of its own behind
                ray.shutdown()
            raise
        self.cpus_per_run = cpus_per_run
        self.default_threads = max(1, self.node_cpus // (workers * self.ranks))
        self.num_gpus = self.ranks if self.has_gpus else 0
        per_run = self.ranks * self.default_threads
        self.workers = max(1, sum(self._slots(r, per_run) for r in nodes))

    def _slots(self, node: dict[str, float], cpus: int) -> int:
        """Runs of ``cpus`` CPUs (and a GPU per rank on a GPU cluster) that fit on ``node``."""
        slots = int(node.get("CPU", 0)) // cpus
        return min(slots, int(node.get("GPU", 0)) // self.ranks) if self.has_gpus else slots

    def _check_ranks_fit(self, nodes: list[dict[str, float]]) -> None:
        """Refuse ``devices_per_run`` ranks that no node holds: a run's ranks share one node,
        each with a CPU at least, and a GPU each on a GPU cluster."""
        def held(r: dict[str, float]) -> int:
            cpus = int(r.get("CPU", 0))
            return min(cpus, int(r.get("GPU", 0))) if self.has_gpus else cpus

        largest = max(nodes, key=held, default={})
        if self.ranks <= held(largest):
            return
        has = f"{int(largest.get('CPU', 0))} CPUs" + (
            f" and {int(largest.get('GPU', 0))} GPUs" if self.has_gpus else ""
        )
        each = "a GPU and a CPU" if self.has_gpus else "a CPU"
        raise ConfigError(
            f"devices_per_run = {self.ranks}: a run's ranks share one node, {each} each at "
            f"least, and the largest node of the Ray cluster at {self.address!r} has {has}; "
            f"allowed: 1..{max(1, held(largest))}"
        )

    def _connect(self) -> None:
        if self.address != "local":
            _send_ray_token_if_available()
        try:
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # ConnectionError, AuthenticationError, a bad address
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"--address = {self.address!r}: cannot connect to a Ray cluster ({last}); a "
                "cluster with token authentication needs its token here (RAY_AUTH_TOKEN or "
                "~/.ray/auth_token); allowed: host:port of a running `ray start --head`, auto, "
                "local"
            ) from None

    def resources_for(self, task: RunTask) -> tuple[int, int]:
        """(CPUs the run's task asks for, threads of each of its ranks): ranks x threads, the
        threads capped so that the request fits on the largest node."""
        threads = rank_threads(
            self.cpus_per_run, task.config.get("train", {}).get("threads"),
            self.default_threads, self.ranks,
        )  # fmt: skip
        threads = max(1, min(threads, self.node_cpus // self.ranks))
        return self.ranks * threads, threads

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None:
        from forgetlab.experiments.worker import run_ranks

        remote = self.ray.remote(max_retries=0)(run_ranks)
        pending = {}
        try:
            # "running" under Ray means submitted: the cluster queues what it cannot place yet
            for t in tasks:
                if not t.lock_wait and (refused := held_elsewhere(t, 0.0)) is not None:
                    on_start(t)
                    on_done(t, refused)
                    continue
                cpus, threads = self.resources_for(t)
                ref = remote.options(num_cpus=cpus, num_gpus=self.num_gpus).remote(
                    t.config, t.run_dir, threads, t.lock_wait, self.ranks,
                    str(self.work_dir / t.run_id),
                )  # fmt: skip
                pending[ref] = (t, time.perf_counter())
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
        finally:
            if self.owned:
                self.ray.shutdown()


def _send_ray_token_if_available() -> None:
    """Turn on Ray's token authentication for this driver when ``RAY_AUTH_MODE`` is unset and a
    token exists: Ray does so for a cluster it discovers, never for an explicit address, and a
    driver without the token is refused by a cluster started with one (Ray >= 2.52)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def make_executor(
    kind: str,
    workers: int,
    work_dir: Path,
    devices_per_run: int = 1,
    *,
    cpus_per_run: int | None = None,
    address: str | None = None,
    slurm: SlurmOptions | None = None,
    study: str = "forgetlab",
) -> LocalExecutor | RayExecutor | SlurmExecutor:
    """The executor ``kind`` for a study; ``address`` is Ray's, ``slurm`` the spec's [slurm]."""
    if workers < 1:
        raise ConfigError(f"--workers = {workers}: allowed: an integer >= 1")
    if address is not None and kind != "ray":
        raise ConfigError(f"--address = {address!r} applies to --executor ray, not {kind!r}")
    if kind == "local":
        return LocalExecutor(workers, work_dir, devices_per_run=devices_per_run)
    if kind == "ray":
        return RayExecutor(workers, work_dir, devices_per_run, cpus_per_run, address)
    if kind == "slurm":
        from forgetlab.experiments.slurm import SlurmExecutor, SlurmOptions

        return SlurmExecutor(
            workers,
            work_dir,
            slurm or SlurmOptions(),
            devices_per_run,
            cpus_per_run,
            job_name=f"forgetlab-{study}",
        )
    raise ConfigError(
        f"--executor = {kind!r} is not an executor; allowed: ['local', 'ray', 'slurm']"
    )
