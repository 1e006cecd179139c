"""Checkpoints of a run: model weights in safetensors, everything else needed to resume in trainer.pt.

A checkpoint is written into a hidden temp directory and renamed into place, then the ``latest``
symlink is swapped atomically: a run killed at any moment leaves either the previous checkpoint or
the new one, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from forgetlab.atomic import atomic_symlink
from forgetlab.models import load_model, save_model
from forgetlab.train.rundir import MODEL_FILE, TRAINER_FILE, RunDir


def save_checkpoint(
    run: RunDir, model: torch.nn.Module, state: dict[str, Any], global_step: int, keep: int = 2
) -> Path:
    """Write model + trainer state for ``global_step`` and point ``latest`` at it."""
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    name = f"step-{global_step:08d}"
    final = run.checkpoints / name
    tmp = run.checkpoints / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp / MODEL_FILE)
    torch.save(state, tmp / TRAINER_FILE)
    if final.exists():  # the same step saved again after a resume: identical content
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_symlink(name, run.latest)
    _prune(run, keep)
    return final


def _prune(run: RunDir, keep: int) -> None:
    steps = sorted(p for p in run.checkpoints.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.resolve() != run.latest.resolve():
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run: RunDir, model: torch.nn.Module) -> dict[str, Any]:
    """Load the latest checkpoint's weights into ``model`` and return its trainer state."""
    latest = run.latest
    loaded = load_model(latest / MODEL_FILE)
    model.load_state_dict(loaded.state_dict())
    return torch.load(latest / TRAINER_FILE, map_location="cpu", weights_only=False)
