"""Read back what the experiment loggers wrote, each with the tool's own reader where it has one:
the CSV with pandas, TensorBoard's EventAccumulator, MLflow's client on a file store, and W&B's
offline run files (its record log, parsed with W&B's own protobuf classes)."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest


def offline_env(patch: pytest.MonkeyPatch, root: Path) -> dict[str, Path]:
    """Point W&B (offline mode) and MLflow (a file store) into ``root``; returns the two places."""
    wandb_dir, mlruns = root / "wandb", root / "mlruns"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_DIR", str(wandb_dir))
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("MLFLOW_TRACKING_URI", mlruns.as_uri())
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store on request
    return {"wandb": wandb_dir, "mlflow": mlruns}


def read_csv(run_dir: Path) -> pd.DataFrame:
    # pandas >= 3 parses floats round-trip by default (and deprecates the argument)
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(run_dir / "metrics.csv", **exact)


def csv_points(run_dir: Path) -> dict[tuple[int, str], float]:
    """{(step, key): value}; fails when a (step, key) appears twice."""
    frame = read_csv(run_dir)
    dup = frame[frame.duplicated(["step", "key"], keep=False)]
    assert dup.empty, f"duplicated points in metrics.csv:\n{dup}"
    return {(int(s), str(k)): float(v) for s, k, v in frame.itertuples(index=False)}


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)...]} as TensorBoard shows it (orphaned events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def tensorboard_hparams(run_dir: Path) -> dict[str, Any]:
    """The hparams the HParams dashboard shows for the run (its session start info)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    out: dict[str, Any] = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for k, v in data.session_start_info.hparams.items():
                out[k] = getattr(v, v.WhichOneof("kind"))
    return out


def _wandb_records(path: Path) -> list[Any]:
    """The records of one ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log chunks (4-byte CRC, 2-byte length, 1-byte type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_runs(wandb_dir: Path) -> list[dict[str, Any]]:
    """Every offline run under ``wandb_dir``: its run fields, config, history by step, summary."""
    runs = []
    for path in sorted(wandb_dir.glob("**/offline-run-*/run-*.wandb")):
        run: dict[str, Any] = {"history": defaultdict(dict), "summary": {}, "config": {}}
        for r in _wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(id=r.run.run_id, project=r.run.project, group=r.run.run_group,
                           job_type=r.run.job_type, name=r.run.display_name)  # fmt: skip
                run["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in r.history.item}  # fmt: skip
                run["history"][int(row["_step"])].update(row)
            elif kind == "summary":
                for u in r.summary.update:
                    run["summary"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        runs.append(run)
    return runs


def mlflow_client(mlruns: Path) -> Any:
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as patch:  # the store is opened (and checked) here only
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return MlflowClient(mlruns.as_uri())


def mlflow_history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value)...] of one metric, in step order (every point the run holds)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
