"""``retinaq admin``: programmes and API keys, straight against the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.apikeys import create_programme, issue_api_key, revoke_api_key
from common.db import engine_from_settings, make_sessionmaker
from common.models import ApiKey, Programme
from common.schema import SchemaNotAtHead, assert_schema_at_head
from common.settings import get_settings


@contextmanager
def admin_session() -> Iterator[Session]:
    """One transaction on a database whose schema is current; the engine is released after."""
    engine = engine_from_settings(get_settings())
    try:
        assert_schema_at_head(engine)
        with make_sessionmaker(engine).begin() as session:
            yield session
    except SchemaNotAtHead as error:
        raise click.ClickException(str(error)) from error
    finally:
        engine.dispose()


@click.group("admin")
def admin() -> None:
    """Manage programmes and their API keys."""


@admin.command("create-programme")
@click.argument("name")
def create_programme_command(name: str) -> None:
    """Create a programme; its API key is printed once, alone on the last line."""
    with admin_session() as session:
        if session.scalar(select(Programme.id).where(Programme.name == name)):
            raise click.ClickException(f"a programme named {name!r} already exists")
        programme, key = create_programme(session, name)
    click.echo(f"programme {name} ({programme.id}); key prefix {key.prefix}", err=True)
    click.echo("store this API key now; it cannot be shown again:", err=True)
    click.echo(key.secret)


@admin.command("create-key")
@click.argument("programme_name")
def create_key(programme_name: str) -> None:
    """Issue another key for a programme (printed once, alone on the last line)."""
    with admin_session() as session:
        programme = session.scalar(select(Programme).where(Programme.name == programme_name))
        if programme is None:
            raise click.ClickException(f"no programme named {programme_name!r}")
        key = issue_api_key(session, programme)
    click.echo(f"key prefix {key.prefix}", err=True)
    click.echo(key.secret)


@admin.command("list-keys")
def list_keys() -> None:
    """List keys by prefix (never the key itself)."""
    with admin_session() as session:
        rows = session.execute(
            select(Programme.name, ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at)
            .join(ApiKey, ApiKey.programme_id == Programme.id)
            .order_by(Programme.name, ApiKey.created_at)
        ).all()
    for name, prefix, created, revoked in rows:
        state = f"revoked {revoked:%Y-%m-%d}" if revoked else "active"
        click.echo(f"{prefix}  {name}  created {created:%Y-%m-%d}  {state}")


@admin.command("revoke-key")
@click.argument("prefix")
def revoke_key(prefix: str) -> None:
    """Revoke the key with this prefix; it stops working at once."""
    with admin_session() as session:
        if not revoke_api_key(session, prefix):
            raise click.ClickException(f"no active key with prefix {prefix!r}")
    click.echo(f"revoked {prefix}")
