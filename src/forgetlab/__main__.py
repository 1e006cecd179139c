"""``python -m forgetlab`` is the ``forgetlab`` command."""

from forgetlab.cli.main import app

app()
