"""WSGI entry point for gunicorn: ``gunicorn api.wsgi:app``."""

from __future__ import annotations

import logging

from api import create_app
from common.settings import get_settings

logging.basicConfig(level=get_settings().log_level)
app = create_app(get_settings())
