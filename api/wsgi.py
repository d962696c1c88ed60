"""WSGI entry point for gunicorn: ``gunicorn api.wsgi:app``.

Under ``retinaq api`` the gunicorn logger class has set logging up already
(:mod:`api.serving.access_log`); another WSGI server gets the same format here.
"""

from __future__ import annotations

import logging

from api import create_app
from common.logs import configure_logging
from common.settings import get_settings

if not logging.getLogger().handlers:
    configure_logging(get_settings().log_format, get_settings().log_level)
app = create_app(get_settings())
