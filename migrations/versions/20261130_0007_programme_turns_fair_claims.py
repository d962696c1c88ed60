"""Programme turns: claims take queued images from the programmes in turn.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.create_table(
        "programme_turns",
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name="fk_programme_turns_programme_id_programmes",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("programme_id", name="pk_programme_turns"),
    )
    # Every programme has its row from the start; NULL puts it first in turn.
    op.execute("INSERT INTO programme_turns (programme_id) SELECT id FROM programmes")
    # Small (queued rows only) and exactly what a claim in turn reads.
    op.create_index(
        "ix_images_queued_programme_id_id",
        "images",
        ["programme_id", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_images_queued_programme_id_id", table_name="images")
    op.drop_table("programme_turns")
