"""The optional parts of an installation (pyproject's extras) and the commands' check for them.

A base installation serves the API and the console; a command that grades, trains or
evaluates stops with one line naming the extra to install, rather than an ImportError
traceback from deep inside TensorFlow's first use.
"""

from __future__ import annotations

from importlib.util import find_spec

import click

# What each extra must make importable; tests/test_packaging.py checks these against
# pyproject.toml's lists.
EXTRAS: dict[str, tuple[str, ...]] = {
    "worker": ("tensorflow", "matplotlib"),
    "lab": ("tensorflow", "matplotlib"),
}


def missing_modules(extra: str) -> list[str]:
    """The modules ``extra`` provides that this installation lacks (none imported to find out)."""
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def require_extra(extra: str) -> None:
    """Stop the running command with the install line when ``extra`` is not installed."""
    missing = missing_modules(extra)
    if missing:
        command = click.get_current_context().command_path
        raise click.ClickException(
            f"{command} needs the {extra} extra ({', '.join(missing)} not installed): "
            f"pip install 'retinaq[{extra}]'"
        )
