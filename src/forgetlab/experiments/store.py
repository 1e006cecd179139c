"""The experiment directory: experiment.json, one run directory per run, results.parquet.

Layout (the contract analysis and reports read)::

    EXP_DIR/
      experiment.json     spec, scale, design, factors, reference, pre-registration and its hash,
                          planned runs, every invocation's command line, start/finish, environment
      runs/<run_id>/      a forgetlab run directory each (run.json, curves.parquet, checkpoints/, tb/)
      results.parquet     one row per planned run: factors, seed, order, budget, status, metrics
      errors/<run_id>.txt why a run failed, when it failed before or outside its run.json
      calibration.json    matched-FLOPs calibrations by config hash (keeps run ids stable)

A run's status comes from its own run.json, so a re-invocation skips finished runs and resumes the
others from their checkpoints. The pre-registration block is hashed when the first run starts;
a later invocation with another block keeps the original hash and flags the change.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from forgetlab.analysis.columns import empty_metrics, flatten_record
from forgetlab.analysis.load import preregistration_hash
from forgetlab.atomic import atomic_write, atomic_write_json, atomic_write_text
from forgetlab.config import ConfigError
from forgetlab.train.rundir import CORRUPT, RunDir, RunDirError

EXPERIMENT_JSON = "experiment.json"
RESULTS = "results.parquet"


def default_study_dir(name: str, scale: str | None) -> Path:
    """Where a study goes without ``--out``: ``results/<name>[-<scale>]``."""
    return Path("results") / (f"{name}-{scale}" if scale else name)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class ExperimentStore:
    """Reads and writes one experiment directory; only the orchestrating process writes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.experiment_json = self.root / EXPERIMENT_JSON
        self.results = self.root / RESULTS

    def read(self) -> dict[str, Any] | None:
        if not self.experiment_json.exists():
            return None
        return json.loads(self.experiment_json.read_text())

    def write(self, doc: dict[str, Any]) -> None:
        atomic_write_json(self.experiment_json, doc)

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.root / "runs" / run_id)

    # ----------------------------------------------------------------------------- lifecycle
    def begin(self, fields: dict[str, Any], argv: list[str], env: dict[str, Any]) -> dict[str, Any]:
        """Create experiment.json, or update it for another invocation of the same study.

        ``fields``: name, spec, scale, design, factors, reference, preregistration, runs.
        """
        doc = self.read()
        if doc is None:
            doc = {"started": now(), "commands": [], "preregistration_changed": False}
        elif doc.get("name") != fields["name"] or doc.get("scale") != fields["scale"]:
            raise ConfigError(
                f"--out {str(self.root)!r} holds experiment {doc.get('name')!r} at scale "
                f"{doc.get('scale')!r}, not {fields['name']!r} at scale {fields['scale']!r}; "
                "choose another --out"
            )
        block = fields.pop("preregistration")
        doc.update(fields)
        self._register(doc, block)
        doc["commands"] = [*doc.get("commands", []), list(argv)]
        doc["env"] = env
        doc["finished"] = None
        self.write(doc)
        return doc

    @staticmethod
    def _register(doc: dict[str, Any], block: dict[str, Any] | None) -> None:
        digest = preregistration_hash(block)
        if "preregistration_sha256" not in doc:
            doc["preregistration"] = block
            doc["preregistration_sha256"] = digest
            doc["preregistered_at"] = now() if block is not None else None
        elif digest != doc["preregistration_sha256"]:
            doc["preregistration_changed"] = True
            doc["preregistration_sha256_now"] = digest
            doc["preregistration_now"] = block
        elif doc.get("preregistration_changed"):
            doc["preregistration_sha256_now"] = digest  # changed back: the flag stays, history

    def finish(self, doc: dict[str, Any], all_finished: bool) -> None:
        doc["finished"] = now() if all_finished else None
        self.write(doc)

    # ------------------------------------------------------------------------- run statuses
    def _error_file(self, run_id: str) -> Path:
        return self.root / "errors" / f"{run_id}.txt"

    def record_error(self, run_id: str, error: str) -> None:
        atomic_write_text(self._error_file(run_id), error)

    def clear_error(self, run_id: str) -> None:
        self._error_file(run_id).unlink(missing_ok=True)

    def status(self, run_id: str) -> tuple[str, str | None]:
        """(finished | failed | running | corrupt | pending, error): ``running`` also means
        interrupted; ``corrupt`` an unreadable run.json, which the next invocation re-runs
        from the run's newest intact checkpoint (rebuilding the record)."""
        try:
            record = self.run_dir(run_id).read()
        except RunDirError as e:
            return CORRUPT, str(e)
        status = record.get("status") if record else None
        err_file = self._error_file(run_id)
        if status == "finished":
            return "finished", None
        if err_file.exists():
            return "failed", err_file.read_text()
        if status == "failed":
            return "failed", record.get("error") if record else None
        return (status or "pending"), None

    # ----------------------------------------------------------------------------- calibration
    def calibration(self) -> dict[str, Any]:
        path = self.root / "calibration.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_calibration(self, cache: dict[str, Any]) -> None:
        atomic_write_json(self.root / "calibration.json", cache)

    # ------------------------------------------------------------------------------- results
    def collect(self, doc: dict[str, Any]) -> pd.DataFrame:
        """results.parquet: one row per planned run, every metric flattened (NaN until finished)."""
        rows = [self._row(entry, list(doc.get("factors", {}))) for entry in doc["runs"]]
        frame = pd.DataFrame(rows)
        atomic_write(self.results, lambda p: frame.to_parquet(p, index=False))
        return frame

    def _row(self, entry: dict[str, Any], factors: list[str]) -> dict[str, Any]:
        status, error = self.status(entry["run_id"])
        row: dict[str, Any] = {"run_id": entry["run_id"], "group": entry["group"]}
        row.update({f"factor.{f}": entry["levels"].get(f) for f in factors})
        row.update(
            seed=entry["seed"],
            order=">".join(entry["order"]),
            order_name=entry["order_name"],
            budget=entry["budget"],
            steps_per_stage=entry["steps_per_stage"],
            status=status,
            error=error,
        )
        row.update(empty_metrics(len(entry["order"]), entry.get("probes") or []))
        record = None if status == CORRUPT else self.run_dir(entry["run_id"]).read()
        if record is not None:
            row.update(flatten_record(record))
        return row
