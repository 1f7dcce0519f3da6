"""``python -m processors.cli``: the ``handoff`` command, for a process started without the script."""

from processors.cli.main import app

app()
