"""The CLI's console width when piped and its number format for small amounts."""

from __future__ import annotations

import io

from rich.table import Table

from forgetlab.cli.console import PIPED_WIDTH, amount, make_console


def test_a_piped_console_is_wide_enough_for_the_plan_tables(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest captures stdout: not a terminal
    assert not console.is_terminal and console.width == PIPED_WIDTH
    table = Table()
    for i in range(10):
        table.add_column(f"column {i} header")
    table.add_row(*(f"{i:,}" for i in range(10)))
    buffer = io.StringIO()
    console.file = buffer
    console.print(table)
    header = next(line for line in buffer.getvalue().splitlines() if "column 9" in line)
    assert "column 0 header" in header  # one line, nothing cut or wrapped


def test_amounts_keep_the_digits_a_tiny_run_needs():
    assert amount(0) == "0"
    assert amount(1234.4) == "1,234"
    assert amount(12.345) == "12.35"
    assert amount(0.000152) == "0.00015"  # "$0.00" before
    assert amount(0.0679) == "0.068"  # "0 s" before
