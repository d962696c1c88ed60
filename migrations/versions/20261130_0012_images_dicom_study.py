"""Images keep the study and camera their DICOM header names, for the FHIR export.

A DICOM photograph's header says which study it belongs to (Study Instance UID), when it
was taken (Study Date) and on which camera (Manufacturer and Model Name); the API reads
them at upload. Other formats carry none, so the columns are nullable.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without defaults: added to the catalogue only, however many rows images holds.
    op.add_column("images", sa.Column("study_instance_uid", sa.String(length=64), nullable=True))
    op.add_column("images", sa.Column("study_date", sa.Date(), nullable=True))
    op.add_column("images", sa.Column("device", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "device")
    op.drop_column("images", "study_date")
    op.drop_column("images", "study_instance_uid")
