"""Alembic from code: upgrade to head, and refuse to run against a database that is not there."""

from __future__ import annotations

import logging.config
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

UPGRADE_HINT = "run `retinaq db upgrade` (or `alembic upgrade head`)"

# What alembic.ini's logging sections give `alembic` by hand: the migrations applied, on stderr.
_UPGRADE_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"generic": {"format": "%(levelname)-5.5s [%(name)s] %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "generic",
        }
    },
    "loggers": {"alembic": {"level": "INFO", "handlers": ["console"], "propagate": False}},
}


class SchemaNotAtHead(RuntimeError):
    """The database's schema revision differs from the code's Alembic head."""


def migrations_dir() -> Path:
    """The installed ``migrations`` package: a checkout's folder, or the copy a wheel ships."""
    return Path(str(resources.files("migrations")))


def alembic_config(database_url: str) -> Config:
    """Alembic's configuration built in code, so an installed copy needs no ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str, *, quiet: bool = False) -> None:
    """Apply every pending migration, logging each one unless ``quiet``."""
    if not quiet:
        logging.config.dictConfig(_UPGRADE_LOGGING)
    command.upgrade(alembic_config(database_url), "head")


def head_revision(database_url: str) -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def assert_schema_at_head(engine: Engine) -> None:
    """Raise :class:`SchemaNotAtHead` with the fixing command unless the schema is current."""
    expected = head_revision(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != expected:
        raise SchemaNotAtHead(
            f"database {engine.url.render_as_string(hide_password=True)} is at revision "
            f"{current or 'none (empty)'} but the code expects {expected}; {UPGRADE_HINT}"
        )
