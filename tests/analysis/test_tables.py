"""A table's header is declared with the getter of its cells, for Markdown, HTML and the terminal."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from forgetlab.analysis.doc import Doc
from forgetlab.analysis.tables import Column, pair_columns, rich_table


@dataclass
class Row:
    name: str
    value: float | None


COLUMNS = [
    Column("name", lambda row: row.name),
    Column("value", lambda row: row.value, lambda v: "n/a" if v is None else f"{v:.2f}", "right"),
]


def test_each_header_renders_above_its_own_cells_in_markdown_and_html(tmp_path):
    doc = Doc("t")
    doc.table(COLUMNS, [Row("a", 1.0), Row("b|c", None)])
    lines = doc.markdown(tmp_path).splitlines()
    at = lines.index("| name | value |")
    assert lines[at + 1 : at + 4] == ["|---|---|", "| a | 1.00 |", "| b\\|c | n/a |"]
    assert "<th>name</th><th>value</th>" in doc.html() and "<td>n/a</td>" in doc.html()


def test_a_table_without_items_is_left_out():
    doc = Doc("t")
    doc.table(COLUMNS, [])
    doc.table(pair_columns("key"), iter([]))
    assert doc.blocks == []


def test_the_terminal_table_has_the_same_headers_cells_and_alignment():
    table = rich_table(COLUMNS, [Row("a", 1.0)], title="rows")
    assert [c.header for c in table.columns] == ["name", "value"]
    assert [c.justify for c in table.columns] == ["left", "right"]
    console = Console(width=80, record=True)
    console.print(table)
    text = console.export_text()
    assert "rows" in text and "1.00" in text
