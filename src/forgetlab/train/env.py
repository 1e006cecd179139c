"""The environment a run executed in, recorded in run.json so a result can be traced and repeated."""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import forgetlab


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirtiness of the repository holding forgetlab (or ``path``), if it is one."""
    where = path or Path(forgetlab.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


PACKAGE_FILES = (".py", ".toml", ".json", ".txt")
"""What the package is made of: its code and the data it ships (the specs)."""


def package_files(root: Path) -> list[Path]:
    """The package's own files under ``root``, sorted (bytecode caches left out)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in PACKAGE_FILES and p.is_file() and "__pycache__" not in p.parts
    )


def files_sha256(root: Path) -> str:
    """One sha256 over every package file's relative path and bytes: equal hashes, equal code."""
    h = hashlib.sha256()
    for p in package_files(root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _record_mismatches(dist: metadata.Distribution, root: Path) -> list[str] | None:
    """Files of the loaded package whose bytes differ from the wheel's RECORD (PEP 376/627), or
    None when RECORD does not describe the loaded files (an editable install, a source tree)."""
    checked, changed = 0, []
    for f in dist.files or []:
        if f.hash is None or f.hash.mode != "sha256" or f.suffix not in PACKAGE_FILES:
            continue
        path = Path(str(dist.locate_file(f))).resolve()
        if not path.is_relative_to(root):
            continue
        checked += 1
        digest = (
            base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
            if path.is_file()
            else b""
        )
        if digest.decode() != f.hash.value:
            changed.append(path.relative_to(root).as_posix())
    return changed if checked else None


@lru_cache(maxsize=4)
def package_trace(root: Path | None = None) -> dict[str, Any]:
    """Which forgetlab this is, for runs outside a git checkout (where ``git`` is null).

    ``files_sha256`` hashes the loaded package's files (code and shipped specs); ``distribution``
    is the installed distribution's name and version and whether it is editable; for a wheel
    install ``record_mismatches`` lists the files changed since installation (RECORD hashes).
    Cached: a process runs the code it loaded first.
    """
    root = (root or Path(forgetlab.__file__).parent).resolve()
    trace: dict[str, Any] = {
        "version": forgetlab.__version__,
        "location": str(root),
        "files_sha256": files_sha256(root),
        "distribution": None,
    }
    try:
        dist = metadata.distribution("forgetlab")
    except metadata.PackageNotFoundError:
        return trace
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        direct = {}
    trace["distribution"] = {
        "name": dist.metadata["Name"],
        "version": dist.version,
        "editable": bool(direct.get("dir_info", {}).get("editable")),
        "record_mismatches": _record_mismatches(dist, root),
    }
    return trace


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "forgetlab": forgetlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "command": sys.argv,
        "git": git_state(),
        "package": package_trace(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def peak_memory_bytes(device: torch.device) -> dict[str, int]:
    """Peak resident memory of the process, and peak allocated GPU memory on CUDA."""
    import resource

    out = {"cpu_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated(device))
    return out
