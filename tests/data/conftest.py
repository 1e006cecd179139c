"""Fixtures of the data-layer tests: a download cache kept across runs, fresh cache roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def cache_root(tmp_path: Path, downloads: Path) -> Path:
    """An empty forgetlab cache whose downloads folder is the shared one."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    return root


@pytest.fixture
def copy_cache():
    """Make a private copy of a prepared cache, for tests that damage or rebuild it."""

    def copy(src: str, dst: Path) -> str:
        shutil.copytree(src, dst, symlinks=True)
        return str(dst)

    return copy
