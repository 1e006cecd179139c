"""Atomic writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path, the free space and what to do."""

    def __init__(self, path: str | Path, note: str = "") -> None:
        self.path = Path(path)
        super().__init__(errno.ENOSPC, f"no space left on the device writing {self.path} "
                         f"({free_space(self.path)}){'; ' + note if note else ''}; free some "
                         "space and run the same command again: it resumes from the last checkpoint")

    def __str__(self) -> str:
        return str(self.strerror)


def free_space(path: Path) -> str:
    """'N MiB free of M MiB' on the filesystem holding ``path`` (its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:,.1f} MiB free of {usage.total / 2**20:,.1f} MiB"


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a failed write for lack of space.

    Also recognises what wrappers turn ENOSPC into: safetensors' "os error 28", pyarrow's
    and torch's messages ("No space left on device").
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    On any failure the temp file is removed; a failure for lack of space is raised as
    :class:`DiskFullError` naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(target) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(target) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_symlink(target: str, link: str | Path) -> None:
    """Point ``link`` at ``target`` in one rename, so a reader never finds it missing."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


TEMP_SUFFIX = ".tmp"  # atomic_write's and atomic_symlink's files: ``.NAME.*.tmp``
TEMP_DIR_PREFIX = ".tmp-"  # directories written then renamed whole (checkpoints): ``.tmp-NAME``


def is_temp(name: str) -> bool:
    """Whether ``name`` is work in progress of an atomic write (never a finished file)."""
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or name.startswith(TEMP_DIR_PREFIX))


def remove_stale_temps(root: str | Path, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """Remove the temp files and directories that writers killed mid-write left under ``root``.

    A kill between a temp's creation and its rename leaves it forever (a checkpoint's is as big as
    the model and its optimizer state). Call this only while holding ``root``'s lock
    (:mod:`forgetlab.locks`): then no live writer owns a temp here. ``skip``: top-level folders
    another lock guards (a study's ``runs``). Returns (entries removed, bytes freed).
    """
    import shutil

    root = Path(root)
    removed = freed = 0
    for here, dirs, files in os.walk(root):
        if Path(here) == root:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [*files, *dirs]:
            if not is_temp(name):
                continue
            path = Path(here) / name
            if path.is_dir() and not path.is_symlink():
                freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path, ignore_errors=True)
            else:
                freed += path.lstat().st_size
                path.unlink(missing_ok=True)
            removed += 1
        dirs[:] = [d for d in dirs if not is_temp(d)]
    return removed, freed
