"""Persistence only: the typed SQLAlchemy 2 tables. No URLs, serialisation or enqueueing here."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.ids import uuid7
from common.screening.grades import GRADES

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp we write is UTC."""
    return datetime.now(UTC)


class ImageState(enum.StrEnum):
    """Life of one image. Terminal states: graded, ungradable, failed, cancelled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    GRADED = "graded"
    UNGRADABLE = "ungradable"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_IMAGE_STATES = (
    ImageState.GRADED,
    ImageState.UNGRADABLE,
    ImageState.FAILED,
    ImageState.CANCELLED,
)
PENDING_IMAGE_STATES = (ImageState.QUEUED, ImageState.PROCESSING)


class BatchState(enum.StrEnum):
    """Life of a batch; ``open`` accepts more images until closed."""

    OPEN = "open"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    CANCELLED = "cancelled"


FINISHED_BATCH_STATES = (
    BatchState.COMPLETED,
    BatchState.COMPLETED_WITH_ERRORS,
    BatchState.CANCELLED,
)


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    """A portable enum column: VARCHAR plus a CHECK constraint, stable across dialects."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


UuidPk = Annotated[uuid.UUID, mapped_column(primary_key=True, default=uuid7)]
Timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]
OptionalTimestamp = Annotated[datetime | None, mapped_column(DateTime(timezone=True))]
Sha256 = Annotated[str, mapped_column(String(64))]


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic constraint names are stable."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[float]: JSON, list[str]: JSON}


class Programme(Base):
    """A screening programme: the tenant that owns keys, batches and images."""

    __tablename__ = "programmes"

    id: Mapped[UuidPk]
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[Timestamp]
    # Quotas; NULL means the deployment-wide default from settings.
    max_pending_images: Mapped[int | None] = mapped_column(Integer)
    max_images_per_minute: Mapped[int | None] = mapped_column(Integer)


class ProgrammeTurn(Base):
    """When a programme's queue was last served (NULL: never): the turn order of fair claims.

    A table of its own rather than a column of ``programmes``, whose rows uploads lock for
    their quotas: a worker choosing whom to serve next never waits on an upload. The row is
    made with the programme, so a claim only ever updates it.
    """

    __tablename__ = "programme_turns"

    programme_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    served_at: Mapped[OptionalTimestamp]


class ProgrammeScheme(Base):
    """A programme's grading scheme, set by ``retinaq admin set-scheme``; no row means ICDR.

    ``mapping`` holds the code of each ICDR grade (0-4) and ``recall`` the months per
    recall setting, both complete, as common.screening.schemes checked them.
    """

    __tablename__ = "programme_schemes"

    programme_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    scheme: Mapped[str] = mapped_column(String(32))
    mapping: Mapped[list[str]] = mapped_column(JSON)
    recall: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[Timestamp]


class ActiveModel(Base):
    """The registry model a role's workers serve, chosen by ``retinaq admin models activate``.

    One row per role (only ``grading`` today); no row means the settings' model. Name,
    version and SHA-256 are those the manifest gave when it was activated, so a worker
    can tell a re-activated, changed file from the one it holds.
    """

    __tablename__ = "active_models"

    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    sha256: Mapped[Sha256]
    activated_at: Mapped[Timestamp]


class ApiKey(Base):
    """An API key; only its SHA-256 is stored, the prefix identifies it in listings and logs."""

    __tablename__ = "api_keys"

    id: Mapped[UuidPk]
    programme_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("programmes.id", ondelete="CASCADE"), index=True
    )
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[Sha256] = mapped_column(unique=True)
    created_at: Mapped[Timestamp]
    revoked_at: Mapped[OptionalTimestamp]
    expires_at: Mapped[OptionalTimestamp]


class Batch(Base):
    """A submission of images by one programme; its state moves forward only."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_programme_id_id", "programme_id", "id"),)

    id: Mapped[UuidPk]
    programme_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programmes.id"))
    reference: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[BatchState] = mapped_column(_enum(BatchState, "batch_state"))
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    # The model that graded it, as the first worker to grade one of its images loaded it;
    # every result records its own model too, and ``models_mixed`` says when workers
    # serving another model graded some of its images (a switch mid-batch).
    model_name: Mapped[str | None] = mapped_column(String(100))
    model_version: Mapped[str | None] = mapped_column(String(50))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    models_mixed: Mapped[bool] = mapped_column(server_default=false())
    # Heat maps for every gradable image, not only the referable and borderline ones.
    explain: Mapped[bool] = mapped_column(server_default=false())
    # Where its completion event goes; NULL: the programme's default (programme_webhooks).
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    created_at: Mapped[Timestamp]
    closed_at: Mapped[OptionalTimestamp]
    completed_at: Mapped[OptionalTimestamp]


class Blob(Base):
    """Stored bytes, one row per SHA-256, shared by every image and heat map naming them.

    The row is the lock that serialises adding a reference with removing the bytes
    (:mod:`common.storage.blobs`); it holds no count, so it can never drift from the references.
    """

    __tablename__ = "blobs"

    sha256: Mapped[Sha256] = mapped_column(primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[Timestamp]


class Image(Base):
    """One submitted photograph. The bytes live in the content-addressed store under ``sha256``."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_batch_id_state", "batch_id", "state"),
        Index("ix_images_batch_id_id", "batch_id", "id"),
        Index("ix_images_programme_id_id", "programme_id", "id"),
        Index("ix_images_programme_id_state", "programme_id", "state"),
        Index("ix_images_programme_id_created_at", "programme_id", "created_at"),
        # A patient's previous screening in the programme, for a scheme's repeat recall.
        Index(
            "ix_images_programme_id_patient_id_batch_id", "programme_id", "patient_id", "batch_id"
        ),
        Index("ix_images_state_enqueued_at", "state", "enqueued_at"),
        Index("ix_images_state_lease_expires_at", "state", "lease_expires_at"),
        # Only the queued images, per programme and oldest first: what a claim in turn
        # reads (common.lifecycle.turns), small however many images are finished.
        Index(
            "ix_images_queued_programme_id_id",
            "programme_id",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        CheckConstraint("laterality IN ('L', 'R')", name="laterality"),
    )

    id: Mapped[UuidPk]
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    programme_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programmes.id"))
    sha256: Mapped[Sha256] = mapped_column(index=True)
    storage_path: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    laterality: Mapped[str | None] = mapped_column(String(1))
    # The X-Request-ID of the upload that sent it: worker log lines about it name the request.
    request_id: Mapped[str | None] = mapped_column(String(64))
    # What a DICOM photograph's header says (common.dicom_header); None for other formats.
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[date | None] = mapped_column(Date)
    device: Mapped[str | None] = mapped_column(String(128))  # manufacturer and model
    state: Mapped[ImageState] = mapped_column(_enum(ImageState, "image_state"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[Timestamp]
    # When a grading task for this image was last sent; the reconciler re-sends stale ones.
    enqueued_at: Mapped[OptionalTimestamp]
    started_at: Mapped[OptionalTimestamp]
    # A processing claim is presumed dead after this moment and the image is re-enqueued.
    lease_expires_at: Mapped[OptionalTimestamp]
    finished_at: Mapped[OptionalTimestamp]


class Result(Base):
    """One model's outcome for one image: a grade, or ungradable with reasons.

    Unique per (image, model SHA-256). An ungradable image has no grade, probabilities or
    referral: the quality check stopped it before the model, and the reasons say why.
    """

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("image_id", "model_sha256", name="uq_results_image_id_model_sha256"),
        Index("ix_results_batch_id_grade", "batch_id", "grade"),
        Index("ix_results_heatmap_sha256", "heatmap_sha256"),
        CheckConstraint("grade BETWEEN 0 AND 4", name="grade_range"),
        CheckConstraint(
            "(gradable AND grade IS NOT NULL AND referable IS NOT NULL)"
            " OR (NOT gradable AND grade IS NULL AND referable IS NULL)",
            name="gradable_has_grade",
        ),
    )

    id: Mapped[UuidPk]
    image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    gradable: Mapped[bool] = mapped_column(server_default=true())
    ungradable_reasons: Mapped[list[str]] = mapped_column(server_default=text("'[]'"))
    quality: Mapped[dict[str, Any] | None]
    grade: Mapped[int | None] = mapped_column(SmallInteger)
    grade_name: Mapped[str | None] = mapped_column(String(32))
    probabilities: Mapped[list[float] | None]
    expected_grade: Mapped[float | None] = mapped_column(Float)
    referable: Mapped[bool | None]
    referable_probability: Mapped[float | None] = mapped_column(Float)
    referable_threshold: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(50))
    model_sha256: Mapped[Sha256]
    preprocessing_version: Mapped[str] = mapped_column(String(20), server_default="1")
    heatmap_sha256: Mapped[str | None] = mapped_column(String(64))
    # When a heat map was last asked for; the reconciler asks again if none came of it.
    heatmap_requested_at: Mapped[OptionalTimestamp]
    inference_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[Timestamp]


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``: the first response is replayed for identical retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("programme_id", "key", name="uq_idempotency_keys_programme_id_key"),
    )

    id: Mapped[UuidPk]
    programme_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programmes.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[Sha256]
    # NULL while the first request is still being processed.
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[dict[str, Any] | None]
    response_headers: Mapped[dict[str, Any] | None]
    created_at: Mapped[Timestamp]
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AuditEvent(Base):
    """Append-only record of who did what: submissions, result reads, exports, deletions."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_programme_id_id", "programme_id", "id"),)

    id: Mapped[UuidPk]
    programme_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("programmes.id"))
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]]
    created_at: Mapped[Timestamp]


class BatchStat(Base):
    """A batch's running counters (images per state, results per grade, referable), kept by
    database triggers on ``images`` and ``results`` so a status poll reads a dozen rows
    instead of aggregating a 100,000-image batch, and no code path can forget to count."""

    __tablename__ = "batch_stats"

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    stat: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


BATCH_STATS = (
    *(state.value for state in ImageState),
    *(f"grade_{grade}" for grade in GRADES),
    "referable",
)


class WebhookState(enum.StrEnum):
    """Life of one webhook event: pending until a 2xx answers it or retries run out."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ProgrammeWebhook(Base):
    """A programme's webhook settings, set by ``retinaq admin set-webhook``.

    The signing secret is stored as given to the operator (``whsec_`` + base64): signing
    needs the secret itself, so it cannot be hashed like an API key.
    """

    __tablename__ = "programme_webhooks"

    programme_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True
    )
    # The default callback URL for batches that name none; NULL: only batches that name one.
    url: Mapped[str | None] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(100))
    # Also send an event for every referable result, not only batch completion.
    on_referable: Mapped[bool] = mapped_column(server_default=false())
    created_at: Mapped[Timestamp]
    secret_created_at: Mapped[Timestamp]


class WebhookDelivery(Base):
    """One webhook event and its delivery; ``id`` is the ``webhook-id`` every retry repeats.

    ``body`` holds the exact bytes sent, fixed when the event is recorded, so a retry is the
    same message. ``next_attempt_at`` is when it is next due; a delivery in flight pushes it
    past its own timeout, so one attempt runs at a time. ``enqueued_at`` says when a task was
    sent for it, so the reconciler sends one for a new event and re-sends only lost ones.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_batch_id_id", "batch_id", "id"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
        # One event of a kind per image: two workers settling a batch at once record it once.
        UniqueConstraint(
            "image_id", "event_type", name="uq_webhook_deliveries_image_id_event_type"
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    programme_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("programmes.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    # The image of a result event; no foreign key, so purging an image keeps the log.
    image_id: Mapped[uuid.UUID | None]
    event_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[WebhookState] = mapped_column(_enum(WebhookState, "webhook_state"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[Timestamp]
    next_attempt_at: Mapped[OptionalTimestamp]
    # When a delivery task was last sent for it (or is due, for a retry sent with a delay).
    enqueued_at: Mapped[OptionalTimestamp]
    finished_at: Mapped[OptionalTimestamp]


class WebhookAttempt(Base):
    """One POST of a webhook event: the delivery log, one row per attempt."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        UniqueConstraint("delivery_id", "attempt", name="uq_webhook_attempts_delivery_id_attempt"),
    )

    id: Mapped[UuidPk]
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[Timestamp]
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(SmallInteger)
    # NULL when a 2xx answered; else a short code (http_status, timeout, redirect, ...).
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
