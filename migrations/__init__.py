"""Alembic's scripts, shipped as a package so an installed copy can migrate its database.

Nothing imports this package: :mod:`common.db.schema` only locates it, and Alembic loads
``env.py`` and ``versions/`` by path.
"""
