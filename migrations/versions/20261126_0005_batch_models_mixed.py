"""A batch says when workers serving different models graded it (a model switched mid-batch).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, which SQLite does in place (a rebuild would drop the batches trigger).
    op.add_column(
        "batches",
        sa.Column("models_mixed", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    # Batches graded before this revision: mixed where their results name another model.
    model = ("model_name", "model_version", "model_sha256")
    batches = sa.table(
        "batches",
        sa.column("id"),
        *(sa.column(name) for name in model),
        sa.column("models_mixed", sa.Boolean()),
    )
    results = sa.table("results", sa.column("batch_id"), *(sa.column(name) for name in model))
    other_model = sa.exists().where(
        results.c.batch_id == batches.c.id,
        sa.or_(*(results.c[name] != batches.c[name] for name in model)),
    )
    op.execute(
        batches.update()
        .where(batches.c.model_sha256.is_not(None), other_model)
        .values(models_mixed=sa.true())
    )


def downgrade() -> None:
    op.drop_column("batches", "models_mixed")
