"""The one exception the data layer raises: a message a user can act on, never a bare traceback."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data problem the user can fix: names the domain, the file and what to do."""
