"""The Slurm executor: a study's runs as ONE Slurm array job, submitted and watched with submitit.

``forgetlab run STUDY --executor slurm`` on a login node writes one array job (one task per run
that is not finished) with the resources of the spec's ``[slurm]`` table, then waits: every task
calls :func:`worker.run_ranks`, as a Ray task does, and its outcome (or the reason it has none:
time limit, out of memory, cancelled) is recorded as the run's. A run of ``devices_per_run`` > 1
ranks is one task on one node holding all of them (``slurm.gpus = devices_per_run`` GPUs, or gloo
ranks on its CPUs with ``gpus = 0``), torchrun's launcher started inside it; runs across nodes
are not supported. Running the command again skips finished runs; interrupted ones resume from
their checkpoints. The submitted job ids are kept in ``logs/slurm/jobs.json``, so a re-run while
the array is still queued or running waits for those tasks instead of submitting them twice. A
task that reaches its time limit is requeued by submitit (``Checkpointable``) and resumes from
its last checkpoint, up to ``max_requeue`` times.

``cluster = "local"`` runs the same submission through submitit's local executor (processes on
this machine, no Slurm), to check a study's submission before using a cluster.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgetlab.config import ConfigError

if TYPE_CHECKING:
    from forgetlab.experiments.executors import OnDone, OnStart, Outcome, RunTask

log = logging.getLogger("forgetlab.experiments")

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")


def minutes(value: int | str) -> int:
    """Slurm's time limit as whole minutes: an int of minutes, or ``[D-]HH:MM:SS``."""
    if isinstance(value, int):
        return value
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(
            f"time = {value!r}: allowed: minutes (an integer) or '[D-]HH:MM:SS', e.g. '04:00:00'"
        )
    days, hours, mins, secs = (int(g or 0) for g in m.groups())
    return days * 1440 + hours * 60 + mins + (1 if secs else 0)


class SlurmOptions(BaseModel):
    """A study's ``[slurm]`` table: where and with what each run's array task is placed.

    GPUs per run are ``gpus``: 0 (the ranks train on CPUs) or the spec's ``devices_per_run``
    (a GPU per rank; the spec refuses any other number). CPUs per run: the threads of every
    rank (:func:`executors.rank_threads`: ``cpus_per_run`` shared among the ranks, else the
    runs' ``train.threads``, else 1).
    """

    model_config = ConfigDict(extra="forbid")

    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="local: submitit's local executor on this machine, no Slurm"
    )
    partition: str | None = None
    time: int | str = Field("01:00:00", description="per run: minutes or [D-]HH:MM:SS")
    gpus: int = Field(0, ge=0, description="GPUs per run: 0 or devices_per_run (one per rank)")
    mem_gb: float | None = Field(None, gt=0, description="memory per run, GB")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description="other #SBATCH options, e.g. {exclude = 'node7'}"
    )
    setup: list[str] = Field(
        default_factory=list, description="shell lines before the run, e.g. 'module load cuda'"
    )
    max_requeue: int = Field(3, ge=0, description="requeues after a time limit (resumes)")
    poll_s: float = Field(15.0, gt=0, le=600, description="seconds between job state checks")

    @field_validator("time")
    @classmethod
    def _time(cls, v: int | str) -> int | str:
        if minutes(v) < 1:
            raise ValueError(f"time = {v!r}: at least one minute")
        return v


class SlurmRun:
    """The callable each array task runs. Checkpointable: on a time limit submitit requeues it
    with the same arguments, and the run resumes from its last checkpoint."""

    def __call__(self, *args: Any) -> Outcome:
        """:func:`worker.run_ranks` with the task's arguments (config, run_dir, threads,
        lock_wait, nproc, stem)."""
        from forgetlab.experiments.worker import run_ranks

        return run_ranks(*args)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class SlurmExecutor:
    """Submits a study's runs as one array job and waits for every task's outcome."""

    name = "slurm"

    def __init__(
        self,
        workers: int,
        work_dir: Path,
        options: SlurmOptions,
        devices_per_run: int = 1,
        cpus_per_run: int | None = None,
        job_name: str = "forgetlab",
    ) -> None:
        try:
            import submitit
        except ImportError:
            raise ConfigError(
                "--executor = 'slurm' needs submitit: pip install 'forgetlab[slurm]'; allowed "
                "without it: local"
            ) from None
        if options.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                "--executor = 'slurm': no `sbatch` on this machine's PATH (run on a Slurm login "
                "node); allowed here: slurm.cluster = 'local' (submitit's local executor)"
            )
        self.submitit = submitit
        self.options = options
        self.work_dir = work_dir.absolute()  # a multi-rank run's launcher files: <run id>.*
        self.folder = work_dir / "slurm"  # submitit's: pickles, logs, results
        self.ranks = devices_per_run
        self.cpus_per_run = cpus_per_run
        self.workers = workers  # array tasks running at once (Slurm's %N array throttle)
        self.job_name = job_name
        self.jobs_file = self.folder / "jobs.json"

    def _executor(self, cpus: int) -> Any:
        o = self.options
        if o.cluster == "local":
            ex = self.submitit.LocalExecutor(folder=self.folder, max_num_timeout=o.max_requeue)
            ex.update_parameters(
                timeout_min=minutes(o.time), gpus_per_node=o.gpus, setup=list(o.setup)
            )
            return ex
        ex = self.submitit.SlurmExecutor(folder=self.folder, max_num_timeout=o.max_requeue)
        params: dict[str, Any] = {
            "job_name": self.job_name,
            "time": minutes(o.time),
            "cpus_per_task": cpus,
            "ntasks_per_node": 1,
            "array_parallelism": self.workers,
            "setup": list(o.setup),
            "additional_parameters": dict(o.sbatch),
        }
        optional = {
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "constraint": o.constraint,
            "gpus_per_node": o.gpus or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if o.mem_gb is not None:  # a bare number would be read as MB
            params["mem"] = f"{round(o.mem_gb * 1024)}M"
        ex.update_parameters(**params)
        return ex

    def resources_for(self, tasks: list[RunTask]) -> tuple[int, int]:
        """(CPUs per array task, threads of each rank): one array job, so one request, covering
        the ranks: ranks x threads, the threads from ``cpus_per_run``, else the largest thread
        count the runs ask for, else 1."""
        from forgetlab.experiments.executors import rank_threads

        wanted = max([int(t.config.get("train", {}).get("threads") or 1) for t in tasks] or [1])
        threads = rank_threads(self.cpus_per_run, wanted, 1, self.ranks)
        return self.ranks * threads, threads

    def run(self, tasks: list[RunTask], on_start: OnStart, on_done: OnDone) -> None:
        if not tasks:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        cpus, threads = self.resources_for(tasks)
        previous = self._live_jobs(tasks)
        fresh = [t for t in tasks if t.run_id not in previous]
        jobs: dict[str, tuple[RunTask, Any]] = {}
        for t in tasks:
            if t.run_id in previous:
                job = self.submitit.SlurmJob(folder=self.folder, job_id=previous[t.run_id])
                log.info("run %s: waiting for its job %s, still queued", t.run_id, job.job_id)
                jobs[t.run_id] = (t, job)
        if fresh:
            ex = self._executor(cpus)
            submitted = ex.map_array(
                SlurmRun(),
                [t.config for t in fresh],
                [t.run_dir for t in fresh],
                [threads] * len(fresh),
                [t.lock_wait for t in fresh],
                [self.ranks] * len(fresh),
                [str(self.work_dir / t.run_id) for t in fresh],
            )
            jobs.update({t.run_id: (t, j) for t, j in zip(fresh, submitted, strict=True)})
            log.info(
                "submitted %d runs as array job %s (%s)",
                len(fresh),
                submitted[0].job_id.split("_")[0],
                self.options.cluster,
            )
        self._save_jobs({i: j.job_id for i, (_, j) in jobs.items()})
        for t, _ in jobs.values():
            on_start(t)  # "running" means submitted: Slurm queues what it cannot place yet
        self._wait(jobs, on_done)

    def _wait(self, jobs: dict[str, tuple[RunTask, Any]], on_done: OnDone) -> None:
        t0 = time.perf_counter()
        waiting = dict(jobs)
        gone_once: set[str] = set()
        while waiting:
            queued = self._queued([j.job_id for _, j in waiting.values()])
            for run_id, (task, job) in list(waiting.items()):
                if queued is None:  # submitit alone: its local processes, or sacct
                    if not job.done():
                        continue
                    outcome = self._outcome(job, t0)
                elif job.job_id in queued:
                    continue
                elif job.paths.result_pickle.exists():
                    outcome = self._outcome(job, t0)
                elif run_id not in gone_once:
                    # out of the queue with no result file: look twice, so that a shared
                    # filesystem can show a result written just before the task ended
                    gone_once.add(run_id)
                    continue
                else:
                    outcome = self._failed(job, t0, "it left the queue without a result")
                del waiting[run_id]
                on_done(task, outcome)
            if waiting:
                time.sleep(self.options.poll_s)

    def _outcome(self, job: Any, t0: float) -> Outcome:
        """A finished job's outcome: what run_one returned, or why there is none."""
        try:
            result = job.result()
        except Exception as e:  # time limit, out of memory, cancelled, node failure
            return self._failed(job, t0, (str(e).strip().splitlines() or [type(e).__name__])[0])
        if isinstance(result, dict) and "status" in result:
            return result
        return self._failed(job, t0, f"unexpected result {result!r}")

    @staticmethod
    def _failed(job: Any, t0: float, why: str) -> Outcome:
        return {
            "status": "failed",
            "seconds": time.perf_counter() - t0,
            "error": f"Slurm job {job.job_id} ended without a result ({why}; killed by a time "
            f"limit, memory, scancel or a node failure?); see {job.paths.stderr}",
        }

    def _queued(self, job_ids: list[str]) -> set[str] | None:
        """The array task ids squeue still lists (None: cannot tell, e.g. the local cluster);
        works without Slurm accounting, which submitit's sacct-based state needs."""
        if self.options.cluster == "local" or shutil.which("squeue") is None:
            return None
        arrays = sorted({j.split("_")[0] for j in job_ids})
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            return None  # controller unreachable: do not conclude anything
        return {line.strip() for line in proc.stdout.splitlines() if line.strip()}

    def _live_jobs(self, tasks: list[RunTask]) -> dict[str, str]:
        """Runs whose job from an earlier invocation is still queued or running (Slurm only)."""
        if self.options.cluster == "local":
            return {}
        recorded = self._recorded()
        wanted = {t.run_id: recorded[t.run_id] for t in tasks if t.run_id in recorded}
        if not wanted:
            return {}
        queued = self._queued(list(wanted.values()))
        if queued is None:
            raise ConfigError(
                f"cannot ask squeue whether the jobs in {self.jobs_file} still run; re-run when "
                "the Slurm controller answers (or delete that file after cancelling them)"
            )
        return {i: j for i, j in wanted.items() if j in queued}

    def _save_jobs(self, jobs: dict[str, str]) -> None:
        from forgetlab.atomic import atomic_write_json

        doc = {"cluster": self.options.cluster, "jobs": {**self._recorded(), **jobs}}
        atomic_write_json(self.jobs_file, doc)

    def _recorded(self) -> dict[str, str]:
        """{run_id: job id} submitted earlier to this kind of cluster (local job ids are process
        ids, never to be looked up in squeue)."""
        if not self.jobs_file.exists():
            return {}
        doc = json.loads(self.jobs_file.read_text())
        return dict(doc["jobs"]) if doc.get("cluster") == self.options.cluster else {}
