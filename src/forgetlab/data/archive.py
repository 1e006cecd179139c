"""Read files straight out of a wheel (zip) or an sdist (tar.gz) without unpacking to disk."""

from __future__ import annotations

import fnmatch
import tarfile
import zipfile
from pathlib import Path


class Archive:
    """A registry file opened for reading; member names are listed in sorted order (determinism)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".whl" or path.suffix == ".zip":
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
            self._tar: tarfile.TarFile | None = None
            self._names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        else:
            self._zip = None
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by close())
            self._names = sorted(m.name for m in self._tar.getmembers() if m.isfile())

    def names(self) -> list[str]:
        """All file members, sorted."""
        return list(self._names)

    def glob(self, pattern: str) -> list[str]:
        """Members matching a shell pattern (``*`` crosses ``/``), sorted."""
        return [n for n in self._names if fnmatch.fnmatchcase(n, pattern)]

    def read(self, name: str) -> bytes:
        """The bytes of one member."""
        if self._zip is not None:
            return self._zip.read(name)
        assert self._tar is not None
        f = self._tar.extractfile(name)
        if f is None:
            raise KeyError(name)
        return f.read()

    def text(self, name: str) -> str:
        """One member decoded as UTF-8 (invalid bytes replaced, so one bad byte drops nothing)."""
        return self.read(name).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Release the file handle."""
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()
