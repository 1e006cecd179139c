"""Checkpoints of a run: model weights in safetensors, everything else needed to resume in trainer.pt.

A checkpoint is written into a hidden temp directory and renamed into place, then the ``latest``
symlink is swapped atomically: a run killed at any moment leaves either the previous checkpoint or
the new one, never a half-written one.

What depends on the wall clock (phase timings, the start time, the curves with their tokens/s:
the fields :class:`~forgetlab.train.state.RunState` marks) goes to ``wallclock.pt``, so that two
identical runs write byte-identical ``model.safetensors`` and ``trainer.pt``.
``checkpoint.json``, written last, records each file's size and sha256 and the run's config
hash. A resume checks the newest checkpoint against it (and that every weight and optimizer
moment is finite) and falls back to the previous one when it is damaged (a flipped byte, a
truncated file, a disk that filled up), naming what it skipped and why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from forgetlab.atomic import (
    TEMP_DIR_PREFIX,
    DiskFullError,
    atomic_symlink,
    atomic_write_json,
    is_disk_full,
)
from forgetlab.data.fileio import sha256_file
from forgetlab.models import ModelLoadError, load_model, save_model
from forgetlab.train.rundir import MODEL_FILE, TRAINER_FILE, RunDir, RunDirError
from forgetlab.train.state import WALLCLOCK_KEYS

log = logging.getLogger("forgetlab.train")

WALLCLOCK_FILE = "wallclock.pt"
MANIFEST_FILE = "checkpoint.json"


def save_checkpoint(
    run: RunDir, model: torch.nn.Module, state: dict[str, Any], global_step: int, keep: int = 2
) -> Path:
    """Write model + trainer state for ``global_step`` and point ``latest`` at it."""
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    name = f"step-{global_step:08d}"
    final = run.checkpoints / name
    tmp = run.checkpoints / f"{TEMP_DIR_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(model, tmp / MODEL_FILE)
        exact = {k: v for k, v in state.items() if k not in WALLCLOCK_KEYS}
        _torch_save(exact, tmp / TRAINER_FILE)
        _torch_save({k: state[k] for k in WALLCLOCK_KEYS if k in state}, tmp / WALLCLOCK_FILE)
        files = (MODEL_FILE, TRAINER_FILE, WALLCLOCK_FILE)
        atomic_write_json(
            tmp / MANIFEST_FILE,
            {
                "global_step": global_step,
                "config_hash": state.get("config_hash"),
                "files": {
                    f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
                    for f in files
                },
            },
        )
        if final.exists():  # the same step saved again after a resume: identical content
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) holds no space
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(final) from None
        raise
    atomic_symlink(name, run.latest)
    _prune(run, keep)
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file: a write error arrives as the OSError it is (with a path
    torch reports a full disk as an opaque "unexpected pos" failure)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _prune(run: RunDir, keep: int) -> None:
    steps = sorted(p for p in run.checkpoints.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.resolve() != run.latest.resolve():
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_config_hash(folder: Path) -> str | None:
    """The config hash a checkpoint was written for (from its manifest, else its trainer.pt)."""
    try:
        return json.loads((folder / MANIFEST_FILE).read_text())["config_hash"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        return torch.load(folder / TRAINER_FILE, map_location="cpu", weights_only=False).get(
            "config_hash"
        )
    except Exception:  # unreadable: the resume will say so, naming the file
        return None


def load_checkpoint(run: RunDir, model: torch.nn.Module) -> dict[str, Any]:
    """Load the newest intact checkpoint's weights into ``model`` and return its trainer state.

    A damaged checkpoint is skipped with a warning naming it and the reason; when none is intact,
    :class:`RunDirError` lists every checkpoint with its reason and says what to do.
    """
    skipped: list[str] = []
    for folder in run.checkpoint_dirs():
        try:
            weights, state = read_checkpoint(folder)
        except CheckpointDamaged as e:
            log.warning("checkpoint %s is damaged (%s); falling back to an older one", folder, e)
            skipped.append(f"{folder.name}: {e}")
            continue
        model.load_state_dict(weights)
        if skipped:
            log.warning("resuming from %s, the newest intact checkpoint", folder)
        return state
    found = "; ".join(skipped) if skipped else "none found"
    raise RunDirError(
        f"no intact checkpoint in {str(run.checkpoints)!r} ({found}); delete {str(run.root)!r} "
        "to run it again from the start"
    )


class CheckpointDamaged(Exception):
    """One checkpoint directory failed a check (the message says which file and how)."""


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and trainer state of one checkpoint directory, after checking its files
    against its manifest and every weight and optimizer moment for NaN/inf."""
    manifest_path = folder / MANIFEST_FILE
    if manifest_path.exists():  # checkpoints of older versions have none: load checks only
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointDamaged(f"{MANIFEST_FILE} unreadable: {e}") from None
        for name, info in files.items():
            path = folder / name
            if not path.is_file():
                raise CheckpointDamaged(f"{name} is missing")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise CheckpointDamaged(f"{name} has {size} bytes, {info['bytes']} were written")
            if sha256_file(path) != info["sha256"]:
                raise CheckpointDamaged(f"{name} does not match its sha256 (bytes changed)")
    try:
        weights = load_model(folder / MODEL_FILE).state_dict()
    except ModelLoadError as e:
        raise CheckpointDamaged(str(e)) from None
    state = _torch_load(folder / TRAINER_FILE)
    if (folder / WALLCLOCK_FILE).exists():
        state.update(_torch_load(folder / WALLCLOCK_FILE))
    bad = first_non_finite(weights) or first_non_finite(state.get("optimizer", {}).get("state", {}))
    if bad:
        raise CheckpointDamaged(f"non-finite values in {bad}")
    return weights, state


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip, a bad pickle: any of torch's reader errors
        raise CheckpointDamaged(f"{path.name} is unreadable ({type(e).__name__}: {e})") from None


def first_non_finite(tree: Any, prefix: str = "") -> str | None:
    """The name of the first floating tensor (or float) holding NaN/inf in a nested dict/list."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return prefix or "tensor"
        return None
    if isinstance(tree, float):
        return None if math.isfinite(tree) else prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(
        tree, list | tuple) else ()
    for k, v in items:
        found = first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if found:
            return found
    return None
