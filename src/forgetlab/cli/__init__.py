"""Command-line interface (``forgetlab ...``)."""
