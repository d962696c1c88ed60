"""What an API process holds for its lifetime, and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.cursors import CursorSealer
from common.settings import Settings
from common.storage.base import ObjectStore


@dataclass(frozen=True)
class ApiState:
    """Created once in ``create_app``; reached through ``app.extensions['retinaq']``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery
    cursors: CursorSealer


def api_state() -> ApiState:
    """The current app's state."""
    state: ApiState = current_app.extensions["retinaq"]
    return state


def db_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = api_state().sessions()
    session: Session = g.db
    return session


def close_db_session(_exc: BaseException | None = None) -> None:
    """Teardown hook: release the request's connection."""
    session = g.pop("db", None)
    if session is not None:
        session.close()
