"""Run a whole study: expand, match budgets, prepare data, execute, collect, with progress.

Order of work: validate and expand the spec (every run's config resolves before anything
starts), make the data the runs need, calibrate matched-FLOPs budgets, write experiment.json
(hashing the pre-registration), then hand the runs that are not finished to the executor. A run
that fails is recorded with its error and the others go on; running the same command again skips
finished runs and resumes interrupted ones from their checkpoints. One orchestrator at a time holds
the study directory's lock (:mod:`forgetlab.locks`), and each run's worker its run directory's.
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from forgetlab.atomic import remove_stale_temps
from forgetlab.config import ConfigError, RunConfig
from forgetlab.experiments.budgets import calibration_window, group_flops, match_steps
from forgetlab.experiments.design import PlannedRun, expand, same_shape_configs
from forgetlab.experiments.executors import Executor, RunTask, make_executor
from forgetlab.experiments.plan import run_flops
from forgetlab.experiments.spec import ExperimentSpec, load_spec
from forgetlab.experiments.store import ExperimentStore
from forgetlab.locks import DirectoryLock
from forgetlab.train.loggers import check_packages

log = logging.getLogger("forgetlab.experiments")


def ensure_data(configs: list[RunConfig], progress: bool) -> None:
    """Prepare each distinct (domains, probes, tokenizer, cache) that cannot be opened yet, once,
    here, before workers start (so they never race to build the same shards)."""
    from forgetlab.data import DataError, open_stream, prepare_run

    seen: set[tuple[Any, ...]] = set()
    for cfg in configs:
        data = cfg.data
        key = (tuple(sorted(data.domains)), tuple(sorted(data.probes)), data.tokenizer,
               data.cache_dir)
        if key in seen:
            continue
        seen.add(key)
        assert data.tokenizer is not None
        try:
            open_stream([*data.domains, *data.probes], data.tokenizer, data.cache_dir)
        except DataError:
            prepare_run(data, progress=progress)


def ensure_bases(
    configs: list[RunConfig], ex: Executor, quiet: bool = False
) -> list[dict[str, Any]]:
    """Train every distinct ``[base_model]`` the runs declare, once each, through the study's
    executor (a local worker process, a Ray task or a Slurm job), before any run is dispatched;
    return the bases' records (key, path, domains, steps, sha256). A base that is cached is only
    checked; one that another study trains now is waited for (its worker waits for the base's
    run-directory lock, then finds it finished). Their data must be prepared (:func:`ensure_data`).
    A base that fails, or whose stored weights are damaged, stops the study here: every run
    that declares it would start from it."""
    from forgetlab.train.base_model import WAIT_FOREVER, BaseModelError, locate, verified_init

    bases = {}
    for cfg in configs:
        if cfg.base_model is not None:
            base = locate(cfg)
            bases.setdefault(base.key, base)
    todo = [b for b in bases.values() if b.status() != "finished"]
    tasks = []
    for b in todo:
        b.root.mkdir(parents=True, exist_ok=True)
        b.write_description()
        log.info("base model %s: training on %s for %d steps", b.key, b.domains,
                 b.config.train.steps_per_stage)
        tasks.append(RunTask(f"base-{b.key}", b.config.model_dump(mode="json"),
                             str(b.run_dir.root), lock_wait=WAIT_FOREVER))
    failed: dict[str, str] = {}
    if tasks:
        tracker = Tracker(len(tasks), ex.workers, quiet, what="base models")

        def on_done(task: RunTask, outcome: dict[str, Any]) -> None:
            if outcome["status"] != "finished":
                failed[task.run_id] = (outcome.get("error") or "unknown error").splitlines()[0]
            tracker.finish(task, outcome)

        with tracker.progress:
            ex.run(tasks, tracker.start, on_done)
    if failed:
        run_id, error = next(iter(failed.items()))
        raise BaseModelError(
            f"{run_id} failed, so no run that declares it can start: {error} (its run "
            f"directory: {bases[run_id.removeprefix('base-')].run_dir.root})"
        )
    return [b.record(verified_init(b).sha256) for b in bases.values()]


def base_configs(configs: list[RunConfig]) -> list[RunConfig]:
    """The run configs that train the bases ``configs`` declare, with the sources that prepare
    their domains (for :func:`ensure_data`)."""
    from forgetlab.train.base_model import base_run_config, base_sources

    out = []
    for c in configs:
        if c.base_model is not None:
            base = base_run_config(c)
            base.data.sources = base_sources(c)
            out.append(base)
    return out


def matched_steps(spec: ExperimentSpec, store: ExperimentStore) -> dict[str, int] | None:
    if "matched_flops" not in spec.budgets:
        return None
    configs, reference = same_shape_configs(spec)
    mf = spec.matched_flops
    window = calibration_window(configs, reference, mf.calibration_steps)
    fns, _, cache = group_flops(configs, mf.method, window, store.calibration())
    store.save_calibration(cache)
    return match_steps(fns, reference, configs[reference].train.steps_per_stage, mf.tolerance)


class Tracker:
    """Counts done / running / failed and an ETA from the runs finished in this invocation."""

    def __init__(self, total: int, slots: int, quiet: bool, what: str = "runs") -> None:
        self.total, self.slots, self.lock = total, slots, threading.Lock()
        self.what = what
        self.done = self.failed = self.running = 0
        self.seconds: list[float] = []
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=quiet,
        )
        self.task = self.progress.add_task(self.text(), total=total)

    def text(self) -> str:
        remaining = self.total - self.done - self.failed
        eta = "--"
        if self.seconds and remaining:
            mean = sum(self.seconds) / len(self.seconds)
            eta = f"{mean * remaining / max(1, min(self.slots, remaining)):,.0f}s"
        elif not remaining:
            eta = "0s"
        what = "" if self.what == "runs" else f"{self.what}: "
        return f"{what}done {self.done} · running {self.running} · failed {self.failed} · ETA {eta}"

    def start(self, task: RunTask) -> None:
        with self.lock:
            self.running += 1
            self.progress.update(self.task, description=self.text())

    def finish(self, task: RunTask, outcome: dict[str, Any]) -> None:
        with self.lock:
            self.running -= 1
            ok = outcome["status"] == "finished"
            self.done += ok
            self.failed += not ok
            if ok and not outcome.get("skipped"):
                self.seconds.append(float(outcome.get("seconds") or 0.0))
            self.progress.update(self.task, advance=1, description=self.text())


def longest_first(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs by estimated FLOPs, costliest first (ties keep the design's order).

    With N workers, starting the long runs first (Graham's longest-processing-time rule) keeps
    workers from idling at the end while one long run finishes alone; on the quickstart's 8 runs,
    where selective write costs 1.33x, the design's order left one of 2 workers idle for ~50 s.
    """
    cost = {r.run_id: run_flops(r.config) for r in runs}
    return sorted(runs, key=lambda r: -cost[r.run_id])


def run_experiment(
    raw: dict[str, Any],
    out: Path,
    scale: str | None = None,
    workers: int = 1,
    executor: str = "local",
    overrides: list[str] | None = None,
    quiet: bool = False,
    argv: list[str] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Run every run of the spec ``raw`` into ``out``; returns a summary of what happened.
    ``address``: the Ray cluster for ``executor = "ray"`` (see :class:`RayExecutor`)."""
    spec, scale = load_spec(raw, scale)
    spec.overrides = [*spec.overrides, *(overrides or [])]
    store = ExperimentStore(out)
    # everything that can be checked without running is checked before --out is created
    if store.root.exists() and not store.root.is_dir():
        raise ConfigError(
            f"--out {str(store.root)!r} is a file, not a directory; choose a new directory"
        )
    ex = make_executor(
        executor,
        workers,
        store.root / "logs",
        spec.devices_per_run,
        cpus_per_run=spec.cpus_per_run,
        address=address,
        slurm=spec.slurm,
        study=spec.name,
    )
    configs, reference = same_shape_configs(spec)
    for cfg in configs.values():  # a logger's missing package fails the study, not each run
        check_packages(cfg.train.loggers)
    # every run's config (other seeds and orders included); matched budgets need calibration
    planned = None if "matched_flops" in spec.budgets else expand(spec)
    with _removed_if_left_empty(store.root), DirectoryLock(store.root, "study directory"):
        # each run's worker cleans its own directory under the run's lock
        removed, freed = remove_stale_temps(store.root, skip=("runs",))
        if removed:
            log.info("%s: removed %d temp file(s) a killed study left (%.1f MB)",
                     store.root, removed, freed / 1e6)
        # a base does not depend on the stream's seeds, orders or budgets: one config per group
        # names every base
        group_configs = list(configs.values())
        ensure_data([*group_configs, *base_configs(group_configs)], progress=not quiet)
        bases = ensure_bases(group_configs, ex, quiet)
        if planned is None:
            planned = expand(spec, matched_steps(spec, store))
        doc = store.begin(
            {**_fields(raw, spec, scale, reference, planned), "base_models": bases},
            argv or sys.argv,
            _env(executor, ex.workers),
        )
        distinct = list({r.run_id: r for r in planned}.values())
        todo = longest_first([r for r in distinct if store.status(r.run_id)[0] != "finished"])
        log.info(
            "%s: %d planned runs, %d distinct, %d to do",
            spec.name,
            len(planned),
            len(distinct),
            len(todo),
        )
        tracker = Tracker(len(todo), ex.workers, quiet)
        lock = threading.Lock()

        def on_done(task: RunTask, outcome: dict[str, Any]) -> None:
            with lock:
                if outcome["status"] == "finished":
                    store.clear_error(task.run_id)
                else:
                    store.record_error(task.run_id, outcome["error"] or "unknown error")
                    log.warning(
                        "run %s failed: %s", task.run_id, (outcome["error"] or "").splitlines()[0]
                    )
                store.collect(doc)
            tracker.finish(task, outcome)
            log.info("run %s %s: %s", task.run_id, outcome["status"], tracker.text())

        tasks = [
            RunTask(r.run_id, r.config.model_dump(mode="json"), str(store.run_dir(r.run_id).root))
            for r in todo
        ]
        with tracker.progress:
            ex.run(tasks, tracker.start, on_done)
        frame = store.collect(doc)
        statuses = {r.run_id: store.status(r.run_id)[0] for r in distinct}
        store.finish(doc, all(s == "finished" for s in statuses.values()))
    failed = sorted(i for i, s in statuses.items() if s == "failed")
    return {
        "exp_dir": str(store.root),
        "planned": len(planned),
        "distinct": len(distinct),
        "skipped_finished": len(distinct) - len(todo),
        "ran": len(todo),
        "finished": sum(s == "finished" for s in statuses.values()),
        "failed": failed,
        "errors": {i: str(frame.loc[frame.run_id == i, "error"].iloc[0]) for i in failed},
    }


@contextmanager
def _removed_if_left_empty(root: Path) -> Iterator[None]:
    """A directory this invocation creates and leaves empty (it failed before writing anything,
    e.g. on data preparation) is removed again, so a failed command leaves nothing behind."""
    created = not root.exists()
    try:
        yield
    except BaseException:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise


def _fields(
    raw: dict[str, Any],
    spec: ExperimentSpec,
    scale: str | None,
    reference: str,
    planned: list[PlannedRun],
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "spec": raw,
        "scale": scale,
        "design": spec.design.kind,
        "factors": {f: list(levels) for f, levels in spec.factors.items()},
        "reference": reference,
        "preregistration": (
            spec.preregistration.model_dump(mode="json") if spec.preregistration else None
        ),
        "runs": [r.record() for r in planned],
    }


def _env(executor: str, workers: int) -> dict[str, Any]:
    import torch

    from forgetlab.train.env import environment

    return {
        **environment(torch.device("cpu")),
        "executor": executor,
        "workers": workers,
        "hostname": platform.node(),
        "time": time.time(),
    }
