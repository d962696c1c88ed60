"""Initial screening schema: programmes, api_keys, batches, images, results.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_STATES = ("open", "queued", "processing", "completed", "completed_with_errors")
IMAGE_STATES = ("queued", "processing", "graded", "ungradable", "failed")


def _state_check(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "programmes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_programmes"),
        sa.UniqueConstraint("name", name="uq_programmes_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name="fk_api_keys_programme_id_programmes",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_programme_id", "api_keys", ["programme_id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        _timestamp("closed_at", nullable=True),
        _timestamp("completed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.ForeignKeyConstraint(
            ["programme_id"], ["programmes.id"], name="fk_batches_programme_id_programmes"
        ),
        sa.CheckConstraint(_state_check(BATCH_STATES), name="ck_batches_batch_state"),
    )
    op.create_index("ix_batches_programme_id_id", "batches", ["programme_id", "id"])
    op.create_table(
        "images",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_path", sa.String(300), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=True),
        sa.Column("laterality", sa.String(1), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_images_batch_id_batches", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["programme_id"], ["programmes.id"], name="fk_images_programme_id_programmes"
        ),
        sa.CheckConstraint("laterality IN ('L', 'R')", name="ck_images_laterality"),
        sa.CheckConstraint(_state_check(IMAGE_STATES), name="ck_images_image_state"),
    )
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_batch_id_state", "images", ["batch_id", "state"])
    op.create_index("ix_images_batch_id_id", "images", ["batch_id", "id"])
    op.create_index("ix_images_programme_id_id", "images", ["programme_id", "id"])
    op.create_table(
        "results",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("grade", sa.SmallInteger(), nullable=False),
        sa.Column("grade_name", sa.String(32), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("referable", sa.Boolean(), nullable=False),
        sa.Column("referable_probability", sa.Float(), nullable=False),
        sa.Column("referable_threshold", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("model_name", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("inference_ms", sa.Float(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_results_image_id_images", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_results_batch_id_batches", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("image_id", "model_sha256", name="uq_results_image_id_model_sha256"),
        sa.CheckConstraint("grade BETWEEN 0 AND 4", name="ck_results_grade_range"),
    )
    op.create_index("ix_results_batch_id_grade", "results", ["batch_id", "grade"])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("images")
    op.drop_table("batches")
    op.drop_table("api_keys")
    op.drop_table("programmes")
