"""Reliability and access: enqueue/lease timestamps, cancelled state, key expiry, quotas,
idempotency keys and an append-only audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_BATCH_STATES = ("open", "queued", "processing", "completed", "completed_with_errors")
OLD_IMAGE_STATES = ("queued", "processing", "graded", "ungradable", "failed")
NEW_BATCH_STATES = (*OLD_BATCH_STATES, "cancelled")
NEW_IMAGE_STATES = (*OLD_IMAGE_STATES, "cancelled")

# PostgreSQL refuses any UPDATE or DELETE on the audit log.
APPEND_ONLY_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$ LANGUAGE plpgsql
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()
"""


def _state_check(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def _replace_state_checks(batch_states: tuple[str, ...], image_states: tuple[str, ...]) -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint("ck_batches_batch_state", type_="check")
        batch.create_check_constraint("ck_batches_batch_state", _state_check(batch_states))
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("ck_images_image_state", type_="check")
        batch.create_check_constraint("ck_images_image_state", _state_check(image_states))


def upgrade() -> None:
    _replace_state_checks(NEW_BATCH_STATES, NEW_IMAGE_STATES)
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("programmes") as batch:
        batch.add_column(sa.Column("max_pending_images", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_images_per_minute", sa.Integer(), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_images_programme_id_state", "images", ["programme_id", "state"])
    op.create_index("ix_images_programme_id_created_at", "images", ["programme_id", "created_at"])
    op.create_index("ix_images_state_enqueued_at", "images", ["state", "enqueued_at"])
    op.create_index("ix_images_state_lease_expires_at", "images", ["state", "lease_expires_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("programme_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("response_headers", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["programme_id"],
            ["programmes.id"],
            name="fk_idempotency_keys_programme_id_programmes",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("programme_id", "key", name="uq_idempotency_keys_programme_id_key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("programme_id", sa.Uuid(), nullable=True),
        sa.Column("key_prefix", sa.String(16), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.ForeignKeyConstraint(
            ["programme_id"], ["programmes.id"], name="fk_audit_events_programme_id_programmes"
        ),
    )
    op.create_index("ix_audit_events_programme_id_id", "audit_events", ["programme_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(APPEND_ONLY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_table("audit_events")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_images_state_lease_expires_at", "images")
    op.drop_index("ix_images_state_enqueued_at", "images")
    op.drop_index("ix_images_programme_id_created_at", "images")
    op.drop_index("ix_images_programme_id_state", "images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("enqueued_at")
    with op.batch_alter_table("programmes") as batch:
        batch.drop_column("max_images_per_minute")
        batch.drop_column("max_pending_images")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
    op.execute("UPDATE images SET state = 'failed' WHERE state = 'cancelled'")
    op.execute("UPDATE batches SET state = 'completed_with_errors' WHERE state = 'cancelled'")
    _replace_state_checks(OLD_BATCH_STATES, OLD_IMAGE_STATES)
