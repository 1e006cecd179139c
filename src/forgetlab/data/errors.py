"""The one exception the data layer raises: a message a user can act on, never a bare traceback."""

from __future__ import annotations

from forgetlab.config.errors import ForgetlabError


class DataError(ForgetlabError, RuntimeError):
    """A data problem the user can fix: names the domain, the file and what to do."""
