"""The repository explains itself: nothing cites a document the repository does not contain (the
source documents the lab was built from, or notes kept beside the checkout), and its Markdown links
resolve. What the repository does contain is indexed in docs/README.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Citations of what is not in the repository: the numbered source documents the lab was built from
# (in prose, abbreviated, plural or inside a test's name) and the notes kept beside the checkout.
# Cite a paper or a docs/ page instead. (The patterns are split so that this file cites nothing.)
OUTSIDE = re.compile(
    r"(?<![a-z])doc(?:ument)?s?[ _-]?0{2}[0-9]"
    r"|\b(?:ARCHITECTURE|FINDINGS|STYLE)\.md"
    r"|\.\./shared\b|/work/" r"shared\b|shared/" r"seeds\b",
    re.IGNORECASE,
)


def tracked_files() -> list[Path]:
    """Every file git tracks, plus untracked ones it does not ignore (a new page counts too)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e})")
    return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]


def outside_citations(path: Path) -> list[str]:
    """``line: text`` of every line of ``path`` that cites a document outside the repository."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):  # binary files cite nothing
        return []
    return [
        f"{i}: {line.strip()[:120]}"
        for i, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {anchor(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or ``#anchor`` does not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    out = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{target} (no heading #{fragment})")
    return out


def test_no_file_cites_documents_outside_the_repository():
    files = tracked_files()
    assert ROOT / "docs" / "README.md" in files and Path(__file__).resolve() in files
    cited = {str(p.relative_to(ROOT)): c for p in files if (c := outside_citations(p))}
    assert not cited, f"cite a paper or a docs/ page instead: {cited}"


def test_every_form_of_an_outside_citation_is_caught(tmp_path):
    number = "0" + "02"  # built here so that this file does not cite anything itself
    lines = [
        f"see docu{'ment'} {number}, section 2",
        f"(doc {number} appendix)",
        f"def test_document_{number}_worked_example():",
        "the sign convention of ARCHITECTURE" + ".md",
        "# FINDINGS" + ".md: unigram 6.0",
        "(see `../" + "shared/FINDINGS" + ".md`)",
        "/work/" + "shared/" + "seeds/000.txt",
    ]
    page = tmp_path / "page.py"
    page.write_text("\n".join([*lines, "documented in docs/metrics.md (Lopez-Paz 2017)"]) + "\n")
    assert [c.split(":")[0] for c in outside_citations(page)] == [str(i) for i in range(1, 8)]
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe" + f"document {number}".encode("utf-16-le"))
    assert outside_citations(binary) == []


def test_markdown_links_resolve_to_files_and_headings():
    pages = [p for p in tracked_files() if p.suffix == ".md"]
    assert ROOT / "docs" / "README.md" in pages
    broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
    assert not broken, broken


def test_broken_link_and_missing_heading_are_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-heading) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad](other.md#no-such-heading)\n"
        "```\n[in code](ignored.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#no-such-heading (no heading #no-such-heading)",
    ]
