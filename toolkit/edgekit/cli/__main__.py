"""``python -m edgekit.cli``: the same entry point as the ``edgekit`` command."""

from edgekit.cli import run

run()
