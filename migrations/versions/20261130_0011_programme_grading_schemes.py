"""Grading schemes: a programme's reporting codes (ICDR or NHS DESP) and recall intervals,
and an index to find a patient's previous screening in the programme.

No row means the ICDR scheme with a 12-month recall, which is what every programme had
before, so existing programmes need no data.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "programme_schemes",
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("scheme", sa.String(length=32), nullable=False),
        sa.Column("mapping", sa.JSON(), nullable=False),
        sa.Column("recall", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("programme_id", name="pk_programme_schemes"),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name="fk_programme_schemes_programme_id_programmes",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_images_programme_id_patient_id_batch_id",
        "images",
        ["programme_id", "patient_id", "batch_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_images_programme_id_patient_id_batch_id", table_name="images")
    op.drop_table("programme_schemes")
