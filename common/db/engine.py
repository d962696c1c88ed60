"""Engine and session factory, shared by the API and the worker.

Both dialects the project runs on are tuned here once: SQLite (embedded profile) gets WAL
and a busy timeout so the API and a worker can write concurrently; PostgreSQL gets
pre-ping so a restarted server is survived. Every engine hides bound parameters from its
error messages: they hold patient ids and filenames, and errors end up in logs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from common.settings import Settings


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """Create an engine with the project's per-dialect tuning; parameters never reach logs."""
    kwargs = {**kwargs, "hide_parameters": True}
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "poolclass" not in kwargs:
        kwargs = {"pool_size": 5, "max_overflow": 10, **kwargs}
    return create_engine(database_url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer proceed together; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """The one session factory of a process; callers own each session's lifetime."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def engine_from_settings(settings: Settings) -> Engine:
    """The engine a process should use, creating the SQLite folder when needed."""
    if settings.is_embedded:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.database_url)
