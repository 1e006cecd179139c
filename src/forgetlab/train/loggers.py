"""Experiment loggers: TensorBoard, Weights & Biases, MLflow and a CSV file, behind one interface.

A run names its loggers in ``train.loggers``; the trainer talks to one :class:`Loggers` fan-out at
four points: an evaluation row of R (row 0 at step 0, then after every stage, on the global
optimizer step), a row of the training curves, the CL metrics at the end, and closing. Each
backend is a small :class:`Logger`; the fan-out owns the rules every backend shares:

* **Numbers are never changed.** Loggers receive copies of what run.json and curves.parquet hold
  (non-finite values are left out); no logger feeds anything back into training.
* **Failures are loud, never fatal mid-run.** A logger that cannot start (a package missing, a
  tracking server refusing) fails the run before its first training step, with one line naming
  the logger. A logger that fails later is switched off for the rest of the run, with a warning
  in the log and its error in run.json's ``loggers`` section; training goes on, since run.json
  and curves.parquet keep every number.
* **Resume neither duplicates nor loses points.** A resumed run continues from its checkpoint's
  global step ``k``: the CSV file drops rows after ``k`` (they are logged again by the resumed
  training, with the values run.json will hold) and skips exact repeats at or before ``k``;
  TensorBoard purges events after ``k`` (``purge_step``); the W&B and MLflow runs are reopened by
  the ids kept in ``loggers.json`` and are not sent a point at or before the last step they hold
  for that key (W&B refuses such steps itself; for MLflow the history is read back at resume).

Runs of a study are grouped: W&B ``group`` = study, ``job_type`` = design group; MLflow puts
every run of a study in the study's experiment, as a child (``mlflow.parentRunId``) of one parent
run per study directory. Where things go is each tool's own setting (``WANDB_PROJECT``,
``WANDB_MODE``, ``WANDB_DIR``, ``MLFLOW_TRACKING_URI``); W&B files default to the run directory.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args

from forgetlab.atomic import atomic_write_json, atomic_write_text
from forgetlab.config import ConfigError, RunConfig
from forgetlab.config.schema import LoggerName
from forgetlab.train.failures import LoggerError
from forgetlab.train.rundir import LOGGERS_CSV, LOGGERS_STATE, TENSORBOARD

log = logging.getLogger("forgetlab.train")

LOGGERS: tuple[str, ...] = get_args(LoggerName)
CSV_FILE = LOGGERS_CSV
STATE_FILE = LOGGERS_STATE  # the W&B and MLflow run ids, so a resumed run logs into the same runs
CSV_COLUMNS = ("step", "key", "value")
# the optional package each logger needs, and the extra that installs it
PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
START_HINTS = {
    "tensorboard": "check that the run directory is writable",
    "csv": "check that the run directory is writable",
    "wandb": "run `wandb login`, or set WANDB_MODE=offline (upload later with `wandb sync`)",
    "mlflow": "check MLFLOW_TRACKING_URI (a server, sqlite:///mlflow.db, or a file store with "
    "MLFLOW_ALLOW_FILE_STORE=true)",
}
CURVE_INDEX = ("step", "stage", "stage_step")  # a curve row's coordinates, not values to plot
Scalar = int | float | str | bool


def check_packages(names: Iterable[str]) -> None:
    """Refuse, in one line, loggers whose optional package is not installed (before any run)."""
    for name in names:
        if name in PACKAGES:
            module, extra = PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"train.loggers = {list(names)}: the {name} logger needs the {module!r} "
                    f"package, which is not installed: pip install 'forgetlab[{extra}]'"
                )


# --------------------------------------------------------------------------- what a run is
@dataclass(frozen=True)
class RunIdentity:
    """Who a run is, for grouping in the tools: its study and design group when it belongs to a
    study (read from the study's experiment.json), else its own name."""

    name: str
    run_id: str
    seed: int
    order: list[str]
    steps_per_stage: int
    study: str | None = None
    study_dir: Path | None = None
    group: str | None = None
    order_name: str | None = None
    budget: str | None = None
    levels: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A readable run name: ``group seed=S order=O budget=B``, or the run's own name."""
        if self.group is None:
            return f"{self.name} ({self.run_id})"
        parts = [self.group, f"seed={self.seed}"]
        if self.order_name:
            parts.append(f"order={self.order_name}")
        if self.budget:
            parts.append(f"budget={self.budget}")
        return " ".join(parts)


def run_identity(cfg: RunConfig, run_dir: Path) -> RunIdentity:
    """The run's identity: a study run (``STUDY/runs/<run_id>`` with STUDY/experiment.json
    listing it) takes study, group, order name, budget and levels from the study's plan."""
    run_dir = Path(run_dir).resolve()
    base = {
        "name": cfg.name,
        "run_id": run_dir.name,
        "seed": cfg.seed,
        "order": list(cfg.data.domains),
        "steps_per_stage": cfg.train.steps_per_stage,
    }
    study_dir = run_dir.parent.parent
    if run_dir.parent.name == "runs":
        try:
            doc = json.loads((study_dir / "experiment.json").read_text())
        except (OSError, ValueError):
            doc = None
        entry = next(
            (r for r in (doc or {}).get("runs", []) if r.get("run_id") == run_dir.name), None
        )
        if doc is not None and entry is not None:
            return RunIdentity(
                **base,
                study=str(doc.get("name")),
                study_dir=study_dir,
                group=entry.get("group"),
                order_name=entry.get("order_name"),
                budget=entry.get("budget"),
                levels=dict(entry.get("levels") or {}),
            )
    return RunIdentity(**base)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """A nested config as ``a.b.c`` keys with scalar values (lists as JSON, None as "null")."""
    out: dict[str, Scalar] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def hparams(cfg: RunConfig, who: RunIdentity) -> dict[str, Scalar]:
    """What a run is, flat: study, group, seed, order, budget, levels, then every config key."""
    head: dict[str, Any] = {
        "study": who.study or "",
        "group": who.group or "",
        "run_id": who.run_id,
        "seed": who.seed,
        "order": " ".join(who.order),
        "order_name": who.order_name or "",
        "budget": who.budget or "",
        "steps_per_stage": who.steps_per_stage,
        **{f"level.{k}": v for k, v in who.levels.items()},
    }
    return {**flatten(head), **flatten(cfg.model_dump(mode="json"))}


def curve_points(row: Mapping[str, Any]) -> dict[str, float]:
    """A curves row as logged keys: ``val_<x>`` -> ``val/<domain>/<x>``, any other number ->
    ``train/<column>`` (the row's step, stage and stage step are coordinates, not values)."""
    domain = row.get("domain")
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in CURVE_INDEX or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out[f"val/{domain}/{k[4:]}" if k.startswith("val_") else f"train/{k}"] = float(v)
    return out


def evaluation_points(
    results: Mapping[str, Mapping[str, float]], prefix: str = "R"
) -> dict[str, float]:
    """``{kind: {column: value}}`` as ``<prefix>/<kind>/<column>``: every kind and column the
    evaluation has (loss, bpb, accuracy per domain, and any others a run records)."""
    return {
        f"{prefix}/{kind}/{column}": float(v)
        for kind, columns in results.items()
        for column, v in columns.items()
    }


def r_row(
    row: int, *tables: tuple[Mapping[str, list[list[float]]], Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Row ``row`` of R matrices as ``{kind: {column: value}}``: each table is ``(R, columns)``
    (the stream's domains, the probes...), every kind each one records."""
    out: dict[str, dict[str, float]] = {}
    for R, columns in tables:
        for kind, matrix in R.items():
            if len(matrix) > row:
                out.setdefault(kind, {}).update(zip(columns, matrix[row], strict=True))
    return out


def metric_points(record: Mapping[str, Any]) -> dict[str, float]:
    """The run's CL metrics and costs (the results table's columns) as ``metrics/<column>``."""
    from forgetlab.analysis.columns import flatten_record

    return {f"metrics/{k}": v for k, v in flatten_record(dict(record)).items()}


def finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


# ----------------------------------------------------------------------------- the interface
class Logger(Protocol):
    """One backend. ``step`` is always the run's global optimizer step (0 before training)."""

    name: str

    def log_hparams(self, params: Mapping[str, Scalar]) -> None: ...

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_final(self, step: int, values: Mapping[str, float]) -> None: ...

    def close(self, status: str) -> None: ...


@dataclass
class Opening:
    """What every backend is opened with."""

    cfg: RunConfig
    run_dir: Path
    who: RunIdentity
    resume_step: int | None  # the checkpoint's global step when resuming; None: a fresh start
    state: dict[str, Any]  # loggers.json: backends keep their run ids here


class Loggers:
    """The fan-out the trainer calls: every backend, each failure contained and reported."""

    def __init__(self, loggers: list[Logger], state: Opening | None = None) -> None:
        self.loggers = loggers
        self.opening = state
        self.failures: dict[str, str] = {}

    @classmethod
    def open(
        cls, cfg: RunConfig, run_dir: Path, resume_step: int | None, enabled: bool = True
    ) -> Loggers:
        """Start the run's loggers (none when not ``enabled``, e.g. ranks other than 0) and log
        its hparams; a backend that cannot start is a :class:`LoggerError` naming it."""
        if not enabled or not cfg.train.loggers:
            return cls([])
        check_packages(cfg.train.loggers)
        run_dir = Path(run_dir)
        state_path = run_dir / STATE_FILE
        state: dict[str, Any] = {}
        if resume_step is not None and state_path.exists():
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_path.read_text())
        opening = Opening(cfg, run_dir, run_identity(cfg, run_dir), resume_step, state)
        started: list[Logger] = []
        for name in cfg.train.loggers:
            try:
                started.append(BACKENDS[name](opening))
            except Exception as e:
                for done in started:
                    with contextlib.suppress(Exception):
                        done.close("failed")
                raise LoggerError(
                    name,
                    f"train.loggers: the {name} logger could not start ({type(e).__name__}: "
                    f"{e}); {START_HINTS[name]}, or remove it from train.loggers",
                ) from e
        if state:  # the ids first, so a run killed from here on logs into the same runs again
            atomic_write_json(state_path, state)
        fan = cls(started, opening)
        fan._each(0, lambda lg: lg.log_hparams(hparams(cfg, opening.who)))
        return fan

    def _each(self, step: int, call: Any) -> None:
        for lg in list(self.loggers):
            try:
                call(lg)
            except Exception as e:  # a logger never takes the run down: it is switched off
                self.loggers.remove(lg)
                self.failures[lg.name] = f"failed at step {step}: {type(e).__name__}: {e}"
                log.warning(
                    "logger %s failed at step %d and is off for the rest of the run "
                    "(run.json and curves.parquet keep every number): %s: %s",
                    lg.name, step, type(e).__name__, e,
                )

    def evaluation(
        self, step: int, results: Mapping[str, Mapping[str, float]], prefix: str = "R"
    ) -> None:
        """An evaluation row: ``{kind: {column: value}}`` at global step ``step``."""
        points = finite(evaluation_points(results, prefix))
        self._each(step, lambda lg: lg.log_metrics(step, points))

    def curve(self, row: Mapping[str, Any]) -> None:
        """One row of the training curves (a logged training step or an in-stage evaluation)."""
        step = int(row["step"])
        points = finite(curve_points(row))
        self._each(step, lambda lg: lg.log_metrics(step, points))

    def final(self, step: int, record: Mapping[str, Any]) -> None:
        """The finished run's CL metrics and costs (the results table's columns)."""
        points = finite(metric_points(record))
        self._each(step, lambda lg: lg.log_final(step, points))

    def close(self, status: str) -> None:
        """Close every backend; ``status``: finished | failed | killed."""
        for lg in self.loggers:
            try:
                lg.close(status)
            except Exception as e:
                self.failures[lg.name] = f"failed on close: {type(e).__name__}: {e}"
                log.warning("logger %s failed on close: %s: %s", lg.name, type(e).__name__, e)
        self.loggers = []
        if self.opening is not None and self.opening.state:
            with contextlib.suppress(OSError):
                atomic_write_json(self.opening.run_dir / STATE_FILE, self.opening.state)

    def report(self) -> dict[str, str]:
        """run.json's ``loggers`` section: each configured logger's outcome so far."""
        names = self.opening.cfg.train.loggers if self.opening else []
        return {n: self.failures.get(n, "ok") for n in names}


# ---------------------------------------------------------------------------------- backends
class CsvLogger:
    """``metrics.csv`` in the run directory: long rows ``step,key,value``, floats in Python's
    shortest round-trip form (``pd.read_csv`` gives back the very numbers run.json holds)."""

    name = "csv"

    def __init__(self, o: Opening) -> None:
        self.path = o.run_dir / CSV_FILE
        keep = -1 if o.resume_step is None else o.resume_step
        rows = [r for r in self._read() if r[0] <= keep]  # a fresh start keeps nothing
        self.seen = {(step, key) for step, key, _ in rows}
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self.file = self.path.open("a", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")

    def _read(self) -> list[tuple[int, str, float]]:
        """The rows on disk; a row a kill cut short (the last line) is dropped."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        rows = []
        for parts in csv.reader(io.StringIO(text)):
            try:
                rows.append((int(parts[0]), parts[1], float(parts[2])))
            except (IndexError, ValueError):
                continue  # the header, or a torn last line
        return rows

    def log_hparams(self, params: Mapping[str, Scalar]) -> None:
        """Nothing: the config is run.json's (a CSV of numbers has no place for it)."""

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        fresh = [(step, k, v) for k, v in values.items() if (step, k) not in self.seen]
        self.writer.writerows((s, k, repr(v)) for s, k, v in fresh)
        self.seen.update((s, k) for s, k, _ in fresh)
        self.file.flush()

    log_final = log_metrics

    def close(self, status: str) -> None:
        self.file.close()


class TensorBoardLogger:
    """Event files in ``RUN_DIR/tb``: scalars by tag, hparams for the HParams dashboard."""

    name = "tensorboard"

    def __init__(self, o: Opening) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # events after the checkpoint (or, on a fresh start, any an earlier attempt left) are
        # hidden by TensorBoard: the resumed run logs those steps again
        purge = 0 if o.resume_step is None else o.resume_step + 1
        self.writer = SummaryWriter(str(o.run_dir / TENSORBOARD), purge_step=purge)
        self.metric_names = [f"metrics/{c}" for c in _metric_columns(o.cfg)]

    def log_hparams(self, params: Mapping[str, Scalar]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, sei = hparams_summary(dict(params), dict.fromkeys(self.metric_names, 0.0))
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    log_final = log_metrics

    def close(self, status: str) -> None:
        self.writer.close()


def _metric_columns(cfg: RunConfig) -> list[str]:
    """The loss-kind metric columns (what the HParams dashboard lists beside the hparams)."""
    from forgetlab.analysis.columns import empty_metrics

    return [c for c in empty_metrics(len(cfg.data.domains)) if c.startswith("loss.")]


class WandbLogger:
    """A W&B run: ``group`` = study, ``job_type`` = design group; the id is kept in loggers.json
    so a resumed run continues the same W&B run (``resume="allow"``). Files go to WANDB_DIR, or
    the run directory; ``WANDB_MODE=offline`` works without an account."""

    name = "wandb"

    def __init__(self, o: Opening) -> None:
        import wandb

        who = o.who
        run_id = o.state.get("wandb") or uuid.uuid4().hex[:16]
        o.state["wandb"] = run_id
        kwargs: dict[str, Any] = {}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(o.run_dir)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "forgetlab",
            group=who.study,
            job_type=who.group,
            name=who.label,
            id=run_id,
            resume="allow",
            reinit="create_new",
            config=hparams(o.cfg, who),
            settings=wandb.Settings(console="off", x_disable_stats=True),
            **kwargs,
        )

    def log_hparams(self, params: Mapping[str, Scalar]) -> None:
        """Given to ``wandb.init`` as the run's config already."""

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        if values:
            self.run.log(dict(values), step=step)

    def log_final(self, step: int, values: Mapping[str, float]) -> None:
        self.run.summary.update(dict(values))

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


MLFLOW_KEY = re.compile(r"[^\w\-. :/]")  # the characters an MLflow metric or param name allows
MLFLOW_PARAM_CHARS = 6000
MLFLOW_BATCH = 100  # log_batch takes at most 100 params (and 1000 metrics) per call


def mlflow_key(key: str) -> str:
    """``loss.forgetting@1`` -> ``loss.forgetting_at_1``: MLflow refuses ``@`` in names."""
    return MLFLOW_KEY.sub("_", key.replace("@", "_at_"))


class MlflowLogger:
    """An MLflow run in the study's experiment, child of one parent run per study directory
    (``mlflow.parentRunId``), tagged with study, group, seed, order and budget. The tracking URI
    is MLflow's own (``MLFLOW_TRACKING_URI``)."""

    name = "mlflow"

    def __init__(self, o: Opening) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        who = o.who
        exp_name = who.study or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "forgetlab"
        if who.study_dir is None:
            exp_id, parent = self._experiment(exp_name), None
        else:  # the study's runs start at once: one of them creates the experiment and parent
            with _file_lock(who.study_dir / ".mlflow.lock"):
                exp_id = self._experiment(exp_name)
                parent = self._parent(exp_id, who)
        tags = {
            "forgetlab.run_id": who.run_id,
            "forgetlab.run_dir": str(o.run_dir.resolve()),
            "forgetlab.seed": str(who.seed),
            "forgetlab.order": " ".join(who.order),
        }
        for key in ("study", "group", "order_name", "budget"):
            if getattr(who, key):
                tags[f"forgetlab.{key}"] = str(getattr(who, key))
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        self.high: dict[str, int] = {}  # per key, the last step the run holds (resume)
        existing = o.state.get("mlflow")
        if existing:
            self.run_id = existing
            self.client.update_run(existing, status="RUNNING")
            data = self.client.get_run(existing).data
            for key in data.metrics:
                steps = [m.step for m in self.client.get_metric_history(existing, key)]
                self.high[key] = max(steps, default=-1)
        else:
            run = self.client.create_run(exp_id, run_name=who.label, tags=tags)
            self.run_id = run.info.run_id
            o.state["mlflow"] = self.run_id

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if missing. A study's runs hold the study's lock here;
        runs of no study may still race: when another process creates the experiment between
        our lookup and our create, MLflow says it exists already, and the lookup again finds
        the one it made."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _parent(self, exp_id: str, who: RunIdentity) -> str:
        """The study's parent run, found by its directory, else created (the caller holds the
        study's lock, so a study has one)."""
        assert who.study_dir is not None
        where = str(who.study_dir.resolve())
        found = self.client.search_runs(
            [exp_id], f"tags.`forgetlab.study_dir` = '{where}'", max_results=1
        )
        if found:
            return found[0].info.run_id
        parent = self.client.create_run(
            exp_id, run_name=who.study, tags={"forgetlab.study_dir": where,
                                              "forgetlab.study": str(who.study)}
        )
        self.client.set_terminated(parent.info.run_id, "FINISHED")  # a container only
        return parent.info.run_id

    def log_hparams(self, params: Mapping[str, Scalar]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MLFLOW_BATCH])

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for k, v in values.items():
            key = mlflow_key(k)
            if step <= self.high.get(key, -1):
                continue  # the run holds this point already (from before a resume)
            items.append(Metric(key, v, now, step))
        for i in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + MLFLOW_BATCH])

    log_final = log_metrics

    def close(self, status: str) -> None:
        final = {"finished": "FINISHED", "killed": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, final)


@contextlib.contextmanager
def _file_lock(path: Path) -> Any:
    """An exclusive flock on ``path`` for the block (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


BACKENDS: dict[str, Any] = {
    "tensorboard": TensorBoardLogger,
    "csv": CsvLogger,
    "wandb": WandbLogger,
    "mlflow": MlflowLogger,
}
