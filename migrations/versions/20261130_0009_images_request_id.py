"""Images keep the request id of the upload that sent them, for the worker's log lines.

A grading task claims whichever images are next in turn (0007), not only those its upload
sent, so the task's header cannot say which upload a graded image came from; the row can.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it to the catalogue only, however many
    # rows images holds; rows uploaded before it name no request.
    op.add_column("images", sa.Column("request_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "request_id")
