"""The ready specs that ship inside the package, found by name: ``forgetlab run cl_mechanisms``.

They live beside this module as ``<name>.toml`` (package data, so a wheel install has them too).
:func:`resolve_spec` is what every command and the Python API call on a spec argument: an existing
file is used as given; otherwise a shipped name (with or without ``.toml``) is looked up here.
Only ``importlib.resources`` is imported, so looking a name up costs nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from forgetlab.config.errors import ConfigError

SUFFIX = ".toml"
STUDY_KEYS = ("factors", "groups", "design", "base")
_TOP_NAME = re.compile(r'^name\s*=\s*"[^"\n]*"[ \t]*$', re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


def is_study_spec(raw: Mapping[str, Any]) -> bool:
    """A study spec has factors, groups, a design or a base at its top level; a run spec has not."""
    return any(k in raw for k in STUDY_KEYS)


def specs_dir() -> Path:
    """The directory holding the shipped ``*.toml`` files (a regular, unzipped install)."""
    return Path(str(resources.files(__name__)))


def shipped_names() -> list[str]:
    """Names of the shipped specs, sorted: ``['cl_mechanisms', 'memory_ffn', ...]``."""
    return sorted(p.stem for p in specs_dir().glob(f"*{SUFFIX}"))


def shipped_spec(name: str) -> Path | None:
    """The shipped spec called ``name`` (``.toml`` optional), or None."""
    stem = name.removesuffix(SUFFIX)
    path = specs_dir() / f"{stem}{SUFFIX}"
    return path if stem and "/" not in stem and os.sep not in stem and path.is_file() else None


def resolve_spec(spec: str | os.PathLike[str]) -> Path:
    """An existing file as given, else the shipped spec of that name; ConfigError otherwise.

    The error lists the shipped names, and says so when a missing path names a shipped spec (an
    old ``experiments/cl_mechanisms.toml`` from a checkout is now just ``cl_mechanisms``).
    """
    path = Path(spec)
    if path.is_file():
        return path
    found = shipped_spec(str(spec))
    if found is not None:
        return found
    names = shipped_names()
    if path.stem in names:
        raise ConfigError(
            f"spec file {str(spec)!r} does not exist; the shipped spec of that name is found by "
            f"name: {path.stem!r}"
        )
    if path.exists():
        raise ConfigError(f"spec {str(spec)!r} is a directory, not a TOML file")
    raise ConfigError(
        f"spec {str(spec)!r} is neither an existing file nor a shipped spec; shipped: {names}"
    )


def copy_spec(name: str | os.PathLike[str], source: str | os.PathLike[str]) -> Path:
    """Write an editable copy of ``source`` (a path or shipped name) as ``name[.toml]``.

    The copy's top-level ``name = "..."`` becomes the new file's stem, so its results go to
    ``results/<stem>`` rather than over the original's. An existing file is never overwritten.
    """
    src = resolve_spec(source)
    dst = Path(name)
    if dst.suffix != SUFFIX:
        dst = dst.with_name(dst.name + SUFFIX)
    if dst.exists():
        raise ConfigError(f"{str(dst)!r} already exists; it is never overwritten: choose a new name")
    text = src.read_text()
    header = _TABLE.search(text)
    head, rest = (text[: header.start()], text[header.start() :]) if header else (text, "")
    head, n = _TOP_NAME.subn(f'name = "{dst.stem}"', head, count=1)
    if n == 0:
        head += f'name = "{dst.stem}"\n'
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(head + rest)
        os.link(tmp, dst)  # atomic and never replaces: a concurrent init cannot be overwritten
    except FileExistsError:
        raise ConfigError(
            f"{str(dst)!r} already exists; it is never overwritten: choose a new name"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst
