"""code: Python source of pinned pure-Python wheels (Django, NetworkX), test files excluded."""

from __future__ import annotations

import re
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("django", "5.2.1", "django-5.2.1-py3-none-any.whl",
            "a9b680e84f9a0e71da83e399f1e922e1ab37b2173ced046b541c72e1589a5961"),
    Package("networkx", "3.4.2", "networkx-3.4.2-py3-none-any.whl",
            "df5d4365b724cf81b8c6a7312509d0c22386097011ad1abe274afd5e9d3bbc5f"),
)
_TEST = re.compile(r"(^|/)(tests?|testing)/|(^|/)(test_[^/]*|[^/]*_test|conftest)\.py$")


def is_source(name: str) -> bool:
    """A non-test ``.py`` file of the package itself (not its ``.dist-info``)."""
    return name.endswith(".py") and ".dist-info/" not in name and not _TEST.search(name)


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """One document per source file, in sorted package and path order."""
    for pkg in PACKAGES:
        archive = archives[pkg.name]
        for name in archive.names():
            if is_source(name):
                yield archive.text(name)


RECIPE = Recipe(
    name="code", description="Python source of Django 5.2.1 and NetworkX 3.4.2 (tests excluded)",
    license="BSD-3-Clause", packages=PACKAGES, files=("**/*.py minus tests",), extract=extract,
    val_fraction=0.04,
)
