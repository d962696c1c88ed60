"""``python -m cli`` is ``retinaq``."""

from cli.main import cli

cli()
