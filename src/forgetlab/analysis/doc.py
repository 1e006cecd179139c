"""A tiny document model that renders to both Markdown and self-contained HTML.

Why not Jinja2 or the ``markdown`` package: the report is built from one list of blocks, and
rendering that list twice keeps report.md and report.html identical in content by construction,
with no template language and no new dependency. Inline text understands ``code`` and **bold**.
HTML embeds every PNG as a base64 data URI (one file to mail or archive) and, on window load,
writes ``data-images-loaded="<loaded>/<total>"`` on ``<body>`` so a browser test can check images.

Everything sits in one ``<main>`` column 1100 px wide at most; table cells wrap between words,
and code (config keys, hashes, criteria) and code blocks break anywhere when they must, and a table wider than :data:`MAX_COLUMNS` is split into several that repeat its
key columns, so that no table scrolls sideways or widens the page.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab.analysis.tables import Column, Item, headers, rows

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f23;
background:#fff}
main{max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top;
overflow-wrap:break-word}td code,th code{overflow-wrap:anywhere}
th{background:#f0f3f6}tr:nth-child(even) td{background:#fafbfc}
code,pre{background:#f4f4f4;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{padding:.6em;white-space:pre-wrap;overflow-wrap:anywhere}
figure{margin:1em 0}figure img{max-width:100%;height:auto;box-sizing:border-box;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
details{margin:1em 0;border:1px solid #ddd;padding:.3em .8em}summary{cursor:pointer;font-weight:600}
.warn{background:#fff3f3;border:2px solid #c00;padding:.6em;font-weight:600}
.pass{color:#060;font-weight:600}.fail{color:#b00;font-weight:600}.undetermined{color:#a60}
"""
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""
VERDICT_WORDS = ("pass", "fail", "undetermined")
MAX_COLUMNS = 8
"""Columns a table may have before it is split (eight short columns fit the 1100 px column)."""


def split_columns(n: int, key_columns: int = 1) -> list[list[int]]:
    """Column indices of the tables an ``n``-column table becomes: all of it when it has at most
    MAX_COLUMNS columns, else the fewest even parts of the other columns, each after the first
    ``key_columns``."""
    if n <= MAX_COLUMNS:
        return [list(range(n))]
    others = list(range(key_columns, n))
    per = max(MAX_COLUMNS - key_columns, 1)
    parts = -(-len(others) // per)
    size = -(-len(others) // parts)
    keys = list(range(key_columns))
    return [keys + others[i : i + size] for i in range(0, len(others), size)]


@dataclass
class Doc:
    """An ordered list of blocks: (kind, payload)."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def table(
        self, columns: Sequence[Column[Item]], items: Iterable[Item], key_columns: int = 1
    ) -> None:
        """One row per item, one cell per column (nothing when there are no items). A table of
        more than MAX_COLUMNS columns is split into as few tables as fit, of even widths, each
        repeating the first ``key_columns`` columns (the row labels)."""
        cells = rows(columns, items)
        if not cells:
            return
        titles = headers(columns)
        for part in split_columns(len(titles), key_columns):
            self.blocks.append(
                ("table", ([titles[c] for c in part], [[row[c] for c in part] for row in cells]))
            )

    @contextmanager
    def details(self, summary: str) -> Iterator[None]:
        """Blocks added inside the ``with`` are collapsed under ``summary`` (HTML ``<details>``;
        Markdown gets the same tags, which GitHub and most viewers render as a fold)."""
        self.blocks.append(("details", summary))
        try:
            yield
        finally:
            self.blocks.append(("end_details", None))

    def image(self, path: Path | None, caption: str) -> None:
        if path is not None:
            self.blocks.append(("img", (path, caption)))

    def markdown(self, root: Path) -> str:
        """Markdown; images link to their files relative to ``root`` (the report's folder)."""
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "h":
                level, text = payload  # type: ignore[misc]
                out += [f"{'#' * level} {text}", ""]
            elif kind == "p":
                out += [str(payload), ""]
            elif kind == "warn":
                out += [f"> **WARNING:** {payload}", ""]
            elif kind == "ul":
                out += [f"- {item}" for item in payload] + [""]  # type: ignore[union-attr]
            elif kind == "code":
                out += ["```", str(payload), "```", ""]
            elif kind == "table":
                titles, cells = payload  # type: ignore[misc]
                out.append("| " + " | ".join(titles) + " |")
                out.append("|" + "---|" * len(titles))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
                out.append("")
            elif kind == "details":
                out += [f"<details><summary>{html.escape(str(payload))}</summary>", ""]
            elif kind == "end_details":
                out += ["</details>", ""]
            elif kind == "img":
                path, caption = payload  # type: ignore[misc]
                out += [
                    f"![{caption}]({Path(path).relative_to(root).as_posix()})",
                    f"*{caption}*",
                    "",
                ]
        return "\n".join(out)

    def html(self) -> str:
        """One self-contained HTML page (PNG images inlined as data URIs)."""
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "h":
                level, text = payload  # type: ignore[misc]
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "p":
                body.append(f"<p>{_inline(str(payload))}</p>")
            elif kind == "warn":
                body.append(f'<div class="warn">WARNING: {_inline(str(payload))}</div>')
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>")  # type: ignore[union-attr]
            elif kind == "code":
                body.append(f"<pre>{html.escape(str(payload))}</pre>")
            elif kind == "table":
                titles, cells = payload  # type: ignore[misc]
                head = "".join(f"<th>{_inline(h)}</th>" for h in titles)
                trs = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in cells)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "details":
                body.append(f"<details><summary>{_inline(str(payload))}</summary>")
            elif kind == "end_details":
                body.append("</details>")
            elif kind == "img":
                path, caption = payload  # type: ignore[misc]
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(caption)}</figcaption></figure>"
                )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head>\n<body><main>\n"
            + "\n".join(body)
            + "\n</main></body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> and **bold** into <strong>."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _md_cell(c: object) -> str:
    return str(c).replace("|", "\\|").replace("\n", " ")


def _td(c: object) -> str:
    """A cell; a verdict (``pass``, ``fail, untested: ...``) is coloured by its first word."""
    text = str(c)
    word = text.split(",", 1)[0]
    cls = f' class="{word}"' if word in VERDICT_WORDS else ""
    return f"<td{cls}>{_inline(text)}</td>"
