"""Tables declared as columns: each column's header written beside the getter of its cell.

A table is a list of :class:`Column` and the items it lists, one row per item, so a header and its
cells cannot drift apart. :meth:`forgetlab.analysis.doc.Doc.table` renders such a table to Markdown
and HTML (the report), :func:`rich_table` to the terminal (the CLI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from rich.table import Table

Item = TypeVar("Item")


def as_is(value: Any) -> Any:
    """The default cell format: the value itself (rendered with ``str``)."""
    return value


@dataclass(frozen=True)
class Column(Generic[Item]):
    """One column: its header, how to get its value from a row's item, and how to format it."""

    header: str
    get: Callable[[Item], Any]
    fmt: Callable[[Any], Any] = as_is
    justify: Literal["left", "right"] = "left"  # the terminal's alignment (Markdown keeps left)
    style: str | None = None  # the terminal's style of the column, e.g. "bold"

    def cell(self, item: Item) -> Any:
        return self.fmt(self.get(item))


def headers(columns: Sequence[Column[Any]]) -> list[str]:
    return [column.header for column in columns]


def rows(columns: Sequence[Column[Item]], items: Iterable[Item]) -> list[list[Any]]:
    """One row of cells per item."""
    return [[column.cell(item) for column in columns] for item in items]


def rich_table(
    columns: Sequence[Column[Item]], items: Iterable[Item], title: str | None = None
) -> Table:
    """The table for the terminal (more rows, e.g. a total, can be added to it afterwards)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column.header, justify=column.justify, style=column.style)
    for row in rows(columns, items):
        table.add_row(*(str(cell) for cell in row))
    return table


def pair_columns(first: str, second: str = "value") -> list[Column[tuple[Any, Any]]]:
    """The two columns of a table of (name, value) pairs."""
    return [Column(first, lambda pair: pair[0]), Column(second, lambda pair: pair[1])]
