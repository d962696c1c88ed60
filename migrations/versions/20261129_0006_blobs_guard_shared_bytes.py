"""Blobs: one row per stored SHA-256, locked by uploads, heat maps and purges alike.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )
    # Purges and the sweeper ask "does any result still show this heat map?".
    op.create_index("ix_results_heatmap_sha256", "results", ["heatmap_sha256"])
    # Every byte already stored gets its row, so a purge can lock it.
    op.execute(
        "INSERT INTO blobs (sha256, size_bytes, created_at) "
        "SELECT sha256, MAX(size_bytes), MIN(created_at) FROM images GROUP BY sha256"
    )
    op.execute(
        "INSERT INTO blobs (sha256, size_bytes, created_at) "
        "SELECT heatmap_sha256, 0, MIN(created_at) FROM results "
        "WHERE heatmap_sha256 IS NOT NULL "
        "AND heatmap_sha256 NOT IN (SELECT sha256 FROM blobs) GROUP BY heatmap_sha256"
    )


def downgrade() -> None:
    op.drop_index("ix_results_heatmap_sha256", table_name="results")
    op.drop_table("blobs")
