"""Batch counters kept by triggers, so status polls stay cheap on 100,000-image batches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IMAGE_STATES = ("queued", "processing", "graded", "ungradable", "failed", "cancelled")
STATS = (*IMAGE_STATES, *(f"grade_{g}" for g in range(5)), "referable")

# Counter rows exist from the batch's creation on; the triggers only ever UPDATE them, so a
# cascade that deletes a batch never re-creates counters for it. Within one row change the
# two counters are touched in name order, so concurrent transactions lock them alike.
POSTGRES = [
    """
    CREATE FUNCTION batch_stats_bump(b uuid, s text, delta bigint) RETURNS void AS $$
        UPDATE batch_stats SET value = value + delta WHERE batch_id = b AND stat = s;
    $$ LANGUAGE sql
    """,
    f"""
    CREATE FUNCTION batch_stats_create() RETURNS trigger AS $$
    BEGIN
        INSERT INTO batch_stats (batch_id, stat, value)
        SELECT NEW.id, s, 0 FROM unnest(ARRAY[{", ".join(f"'{s}'" for s in STATS)}]) AS s;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION batch_stats_images() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM batch_stats_bump(NEW.batch_id, NEW.state, 1);
        ELSIF TG_OP = 'DELETE' THEN
            PERFORM batch_stats_bump(OLD.batch_id, OLD.state, -1);
        ELSIF OLD.state <> NEW.state THEN
            IF OLD.state < NEW.state THEN
                PERFORM batch_stats_bump(OLD.batch_id, OLD.state, -1);
                PERFORM batch_stats_bump(NEW.batch_id, NEW.state, 1);
            ELSE
                PERFORM batch_stats_bump(NEW.batch_id, NEW.state, 1);
                PERFORM batch_stats_bump(OLD.batch_id, OLD.state, -1);
            END IF;
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION batch_stats_results() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM batch_stats_bump(NEW.batch_id, 'grade_' || NEW.grade, 1);
            IF NEW.referable THEN PERFORM batch_stats_bump(NEW.batch_id, 'referable', 1); END IF;
        ELSE
            PERFORM batch_stats_bump(OLD.batch_id, 'grade_' || OLD.grade, -1);
            IF OLD.referable THEN PERFORM batch_stats_bump(OLD.batch_id, 'referable', -1); END IF;
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    "CREATE TRIGGER batch_stats_create AFTER INSERT ON batches"
    " FOR EACH ROW EXECUTE FUNCTION batch_stats_create()",
    "CREATE TRIGGER batch_stats_images AFTER INSERT OR DELETE OR UPDATE OF state ON images"
    " FOR EACH ROW EXECUTE FUNCTION batch_stats_images()",
    "CREATE TRIGGER batch_stats_results AFTER INSERT OR DELETE ON results"
    " FOR EACH ROW EXECUTE FUNCTION batch_stats_results()",
]
POSTGRES_DOWN = [
    "DROP TRIGGER batch_stats_results ON results",
    "DROP TRIGGER batch_stats_images ON images",
    "DROP TRIGGER batch_stats_create ON batches",
    "DROP FUNCTION batch_stats_results()",
    "DROP FUNCTION batch_stats_images()",
    "DROP FUNCTION batch_stats_create()",
    "DROP FUNCTION batch_stats_bump(uuid, text, bigint)",
]


def _sqlite_bump(batch: str, stat: str, delta: int, condition: str = "") -> str:
    where = f"batch_id = {batch} AND stat = {stat}" + (f" AND {condition}" if condition else "")
    return f"UPDATE batch_stats SET value = value + ({delta}) WHERE {where};"


SQLITE = [
    "CREATE TRIGGER batch_stats_create AFTER INSERT ON batches BEGIN "
    "INSERT INTO batch_stats (batch_id, stat, value) VALUES "
    + ", ".join(f"(NEW.id, '{s}', 0)" for s in STATS)
    + "; END",
    "CREATE TRIGGER batch_stats_images_insert AFTER INSERT ON images BEGIN "
    + _sqlite_bump("NEW.batch_id", "NEW.state", 1)
    + " END",
    "CREATE TRIGGER batch_stats_images_delete AFTER DELETE ON images BEGIN "
    + _sqlite_bump("OLD.batch_id", "OLD.state", -1)
    + " END",
    "CREATE TRIGGER batch_stats_images_update AFTER UPDATE OF state ON images"
    " WHEN OLD.state <> NEW.state BEGIN "
    + _sqlite_bump("OLD.batch_id", "OLD.state", -1)
    + _sqlite_bump("NEW.batch_id", "NEW.state", 1)
    + " END",
    "CREATE TRIGGER batch_stats_results_insert AFTER INSERT ON results BEGIN "
    + _sqlite_bump("NEW.batch_id", "'grade_' || NEW.grade", 1)
    + _sqlite_bump("NEW.batch_id", "'referable'", 1, "NEW.referable")
    + " END",
    "CREATE TRIGGER batch_stats_results_delete AFTER DELETE ON results BEGIN "
    + _sqlite_bump("OLD.batch_id", "'grade_' || OLD.grade", -1)
    + _sqlite_bump("OLD.batch_id", "'referable'", -1, "OLD.referable")
    + " END",
]
SQLITE_DOWN = [
    f"DROP TRIGGER {name}"
    for name in (
        "batch_stats_results_delete",
        "batch_stats_results_insert",
        "batch_stats_images_update",
        "batch_stats_images_delete",
        "batch_stats_images_insert",
        "batch_stats_create",
    )
]

# Counters for batches that existed before this revision.
BACKFILL = [
    "INSERT INTO batch_stats (batch_id, stat, value) SELECT b.id, s.stat, 0 FROM batches b"
    " CROSS JOIN (" + " UNION ALL ".join(f"SELECT '{s}' AS stat" for s in STATS) + ") s",
    "UPDATE batch_stats SET value = (SELECT count(*) FROM images i"
    " WHERE i.batch_id = batch_stats.batch_id AND i.state = batch_stats.stat)"
    " WHERE stat IN (" + ", ".join(f"'{s}'" for s in IMAGE_STATES) + ")",
    "UPDATE batch_stats SET value = (SELECT count(*) FROM results r"
    " WHERE r.batch_id = batch_stats.batch_id AND 'grade_' || r.grade = batch_stats.stat)"
    " WHERE stat LIKE 'grade_%'",
    "UPDATE batch_stats SET value = (SELECT count(*) FROM results r"
    " WHERE r.batch_id = batch_stats.batch_id AND r.referable) WHERE stat = 'referable'",
]


def upgrade() -> None:
    op.create_table(
        "batch_stats",
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("stat", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "stat", name="pk_batch_stats"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name="fk_batch_stats_batch_id_batches",
            ondelete="CASCADE",
        ),
    )
    for statement in BACKFILL:
        op.execute(statement)
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES if postgres else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_DOWN if postgres else SQLITE_DOWN:
        op.execute(statement)
    op.drop_table("batch_stats")
