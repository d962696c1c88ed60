"""Alembic from code: upgrade to head, and refuse to run against a database that is not there."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from common.settings import PROJECT_ROOT

UPGRADE_HINT = "run `retinaq db upgrade` (or `alembic upgrade head`)"


class SchemaNotAtHead(RuntimeError):
    """The database's schema revision differs from the code's Alembic head."""


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at ``migrations/`` and the given database."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str, *, quiet: bool = False) -> None:
    """Apply every pending migration; ``quiet`` leaves the caller's logging alone."""
    config = alembic_config(database_url)
    config.attributes["configure_logger"] = not quiet
    command.upgrade(config, "head")


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
