"""Clinically shaped results: gradability with reasons, expected grade, preprocessing version
and heat maps on results; the model and the explain flag on batches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite rebuilds a table to change a column's nullability, and dropping the old table drops
# its triggers: the batch counters' triggers on results are re-created afterwards.
SQLITE_RESULT_TRIGGERS = [
    "CREATE TRIGGER batch_stats_results_insert AFTER INSERT ON results BEGIN "
    "UPDATE batch_stats SET value = value + (1) "
    "WHERE batch_id = NEW.batch_id AND stat = 'grade_' || NEW.grade; "
    "UPDATE batch_stats SET value = value + (1) "
    "WHERE batch_id = NEW.batch_id AND stat = 'referable' AND NEW.referable; END",
    "CREATE TRIGGER batch_stats_results_delete AFTER DELETE ON results BEGIN "
    "UPDATE batch_stats SET value = value + (-1) "
    "WHERE batch_id = OLD.batch_id AND stat = 'grade_' || OLD.grade; "
    "UPDATE batch_stats SET value = value + (-1) "
    "WHERE batch_id = OLD.batch_id AND stat = 'referable' AND OLD.referable; END",
]
GRADED_ONLY = ("grade", "grade_name", "probabilities", "referable", "referable_probability")
GRADABLE_CHECK = (
    "(gradable AND grade IS NOT NULL AND referable IS NOT NULL)"
    " OR (NOT gradable AND grade IS NULL AND referable IS NULL)"
)
COLUMN_TYPES = {
    "grade": sa.SmallInteger(),
    "grade_name": sa.String(32),
    "probabilities": sa.JSON(),
    "referable": sa.Boolean(),
    "referable_probability": sa.Float(),
    "confidence": sa.Float(),
}


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _recreate_sqlite_triggers() -> None:
    if _is_sqlite():
        for statement in SQLITE_RESULT_TRIGGERS:
            op.execute(statement)


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name in (*GRADED_ONLY, "confidence"):
            batch.alter_column(name, existing_type=COLUMN_TYPES[name], nullable=True)
        batch.add_column(
            sa.Column("gradable", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch.add_column(
            sa.Column("ungradable_reasons", sa.JSON(), server_default="[]", nullable=False)
        )
        batch.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("expected_grade", sa.Float(), nullable=True))
        # Results written before this revision came from preprocessing version 1.
        batch.add_column(
            sa.Column("preprocessing_version", sa.String(20), server_default="1", nullable=False)
        )
        batch.add_column(sa.Column("heatmap_sha256", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("heatmap_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.create_check_constraint("ck_results_gradable_has_grade", GRADABLE_CHECK)
    _recreate_sqlite_triggers()
    # Plain ADD COLUMN, which SQLite does in place: a rebuild would drop the batches trigger
    # that creates each batch's counters.
    op.add_column("batches", sa.Column("model_name", sa.String(100), nullable=True))
    op.add_column("batches", sa.Column("model_version", sa.String(50), nullable=True))
    op.add_column("batches", sa.Column("model_sha256", sa.String(64), nullable=True))
    op.add_column(
        "batches", sa.Column("explain", sa.Boolean(), server_default=sa.false(), nullable=False)
    )


def downgrade() -> None:
    for name in ("explain", "model_sha256", "model_version", "model_name"):
        op.drop_column("batches", name)
    # Ungradable outcomes have no place in the old schema: their images go back to the queue.
    op.execute(
        "UPDATE images SET state = 'queued', lease_expires_at = NULL WHERE id IN "
        "(SELECT image_id FROM results WHERE NOT gradable)"
    )
    op.execute("DELETE FROM results WHERE NOT gradable")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint("ck_results_gradable_has_grade", type_="check")
        for name in (
            "heatmap_requested_at",
            "heatmap_sha256",
            "preprocessing_version",
            "expected_grade",
            "quality",
            "ungradable_reasons",
            "gradable",
        ):
            batch.drop_column(name)
        for name in (*GRADED_ONLY, "confidence"):
            batch.alter_column(name, existing_type=COLUMN_TYPES[name], nullable=False)
    _recreate_sqlite_triggers()
