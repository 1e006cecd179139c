"""Read an experiment directory into one results table plus its metadata.

The experiment engine writes ``experiment.json``, ``runs/<run_id>/run.json`` and ``results.parquet``
(one row per run). Analysis reads only these files, never live objects, and tolerates what an
interrupted or partly failed experiment leaves behind: failed and missing runs stay in the table
with their status (so the report can list them) and are dropped from the statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgetlab.analysis.columns import flatten_record
from forgetlab.config import ConfigError
from forgetlab.train.rundir import CORRUPT, RunDir, RunDirError

EXPERIMENT_JSON = "experiment.json"
RESULTS = "results.parquet"
FINISHED = "finished"
# Columns that identify a run; every other numeric column is a metric.
ID_COLUMNS = ("run_id", "group", "seed", "order", "budget", "status", "error")


def preregistration_hash(block: dict[str, Any] | None) -> str | None:
    """sha256 of a pre-registration block's canonical JSON (key order and whitespace do not
    matter); experiment.json stores it when the first run starts."""
    if block is None:
        return None
    canonical = json.dumps(block, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Experiment:
    """One experiment directory: metadata, the per-run table and each run's run.json."""

    root: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    @property
    def factors(self) -> dict[str, list[str]]:
        return {k: [str(v) for v in vals] for k, vals in (self.meta.get("factors") or {}).items()}

    @property
    def preregistration(self) -> dict[str, Any] | None:
        """The registered block; a block first given after the first run started (then only
        exploratory, as the report says) when none was registered."""
        return self.meta.get("preregistration") or self.meta.get("preregistration_now")

    @property
    def reference(self) -> str | None:
        return self.meta.get("reference")

    def finished(self) -> pd.DataFrame:
        """The runs that count: status ``finished``."""
        return self.results[self.results["status"] == FINISHED].reset_index(drop=True)

    def curves(self, run_id: str) -> pd.DataFrame | None:
        """A run's curves.parquet, or None when it has none."""
        run = next((r for r in self.meta.get("runs", []) if r["run_id"] == run_id), None)
        path = self.root / (run["dir"] if run else f"runs/{run_id}") / "curves.parquet"
        return pd.read_parquet(path) if path.exists() else None


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Numeric columns that are metrics (not ids, not factor levels), in table order."""
    return [
        c
        for c in frame.columns
        if c not in ID_COLUMNS
        and not c.startswith("factor.")
        and pd.api.types.is_numeric_dtype(frame[c])
    ]


def row_from_record(run: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """One results row from a run.json, in the results.parquet layout (used when that is missing)."""
    row: dict[str, Any] = {
        "run_id": run["run_id"],
        "group": run["group"],
        **{f"factor.{k}": v for k, v in (run.get("levels") or {}).items()},
        "seed": run.get("seed"),
        "order": ">".join(run.get("order") or []),
        "budget": run.get("budget"),
        "status": (record or {}).get("status", "missing"),
        "error": (record or {}).get("error"),
    }
    if record and record.get("metrics"):
        row.update(flatten_record(record))
    return row


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_experiment(path: str | Path) -> Experiment:
    """Read EXP_DIR; raises ConfigError when it is not an experiment directory."""
    root = Path(path)
    meta_path = root / EXPERIMENT_JSON
    if not meta_path.is_file():
        raise ConfigError(
            f"{str(root)!r} holds no {EXPERIMENT_JSON}: not a forgetlab experiment directory"
        )
    meta = _read_json(meta_path)
    if meta is None or not isinstance(meta.get("runs"), list):
        raise ConfigError(f"{str(meta_path)!r} is not a valid experiment.json (no 'runs' list)")
    records, corrupt = {}, {}
    for run in meta["runs"]:
        try:
            rec = RunDir(root / run.get("dir", f"runs/{run['run_id']}")).read()
        except RunDirError as e:
            corrupt[run["run_id"]] = str(e)
            continue
        if rec is not None:
            records[run["run_id"]] = rec
    if (root / RESULTS).exists():
        results = pd.read_parquet(root / RESULTS)
    else:
        results = pd.DataFrame([row_from_record(r, records.get(r["run_id"])) for r in meta["runs"]])
    if results.empty:
        raise ConfigError(f"{str(root)!r} lists no runs: nothing to analyse")
    results = _mark_corrupt(results, corrupt)
    results = _with_parameters(results, records)
    for col in metric_columns(results):
        results[col] = results[col].astype(float)
    for col, default in (("budget", "default"), ("error", None), ("status", FINISHED)):
        if col not in results:
            results[col] = default
    results["budget"] = results["budget"].fillna("default").astype(str)
    return Experiment(root=root, meta=meta, results=results, records=records)


def _mark_corrupt(results: pd.DataFrame, corrupt: dict[str, str]) -> pd.DataFrame:
    """Runs whose run.json is unreadable now: status ``corrupt`` with the reason, and none of the
    numbers an earlier results.parquet may still hold for them (they can no longer be checked)."""
    if not corrupt:
        return results
    out = results.copy()
    rows = out["run_id"].isin(list(corrupt))
    if "error" not in out:
        out["error"] = None
    out["status"] = out["status"].astype(object)
    out["error"] = out["error"].astype(object)
    out.loc[rows, "status"] = CORRUPT
    out.loc[rows, "error"] = out.loc[rows, "run_id"].map(corrupt)
    for col in metric_columns(out):
        out.loc[rows, col] = np.nan
    return out


def _with_parameters(results: pd.DataFrame, records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Add params.total / params.trainable / params.frozen from each run.json (for `frozen`)."""
    out = results.copy()
    for key in ("total", "trainable"):
        out[f"params.{key}"] = [
            (records.get(r) or {}).get("parameters", {}).get(key, np.nan) for r in out["run_id"]
        ]
    out["params.frozen"] = out["params.total"] - out["params.trainable"]
    return out
