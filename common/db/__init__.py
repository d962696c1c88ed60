"""Where the schema is: the engine and sessions, the tables, and Alembic from code."""
