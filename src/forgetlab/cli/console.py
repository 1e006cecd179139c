"""The CLI's rich console and number format, in a module light enough for every command to import."""

from __future__ import annotations

import os

from rich.console import Console

PIPED_WIDTH = 200
"""Columns of output that is not a terminal (a pipe, a log file): rich's default of 80 would cut
wide tables such as the plan's GPU costs."""


def make_console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width on a terminal, ``PIPED_WIDTH`` columns elsewhere
    (``COLUMNS`` still wins where it is set)."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=PIPED_WIDTH)
    return console


def amount(x: float) -> str:
    """A non-negative amount (seconds, hours, dollars) with the digits it needs: "1,234", "12.35",
    "0.0021", so a tiny run's cost reads as a small number rather than "0" or "0.00"."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:,.2f}"
    return f"{x:.2g}"
