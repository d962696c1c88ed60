"""Grading a micro-batch of images: claim, decode, predict, record, all guarded by state.

An image is *claimed* by one guarded UPDATE that moves it to ``processing``, bumps
``attempts`` and sets a lease deadline; the attempt number fences the final write
(:mod:`worker.recording`), so if a task is delivered twice only the latest claim can
record a result. Each image then passes the quality check (:mod:`common.quality`): one
that fails becomes ``ungradable`` with its reasons and never reaches the model. A bad
image fails alone. Identical bytes are graded once: within a task by content hash, and
across tasks by reusing the result the same model already gave the same programme.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from common.batch_progress import fail_exhausted, mark_batches_processing, record_batch_model
from common.imaging import ImageDecodeError
from common.models import Image, ImageState, utcnow
from common.quality import QualityReport, assess_quality
from common.results import ImageOutcome, interpret_probabilities
from worker.db_retry import with_db_retry
from worker.recording import known_outcomes, record_outcomes

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)
UNCHECKED = QualityReport(gradable=True, reasons=(), measures={})  # quality_check is off


@dataclass(frozen=True)
class Claim:
    """An image this task now owns, fenced by its attempt number."""

    image_id: uuid.UUID
    batch_id: uuid.UUID
    programme_id: uuid.UUID
    sha256: str
    storage_path: str
    attempt: int

    @property
    def content(self) -> tuple[uuid.UUID, str]:
        """Identical bytes of one programme are graded once; across programmes, never shared."""
        return (self.programme_id, self.sha256)


@dataclass
class GradingReport:
    """What one task did, for logs and tests."""

    claimed: int = 0
    graded: int = 0
    ungradable: int = 0
    failed: int = 0
    skipped: int = 0
    fenced_out: int = 0
    inferred: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def grade_images(runtime: WorkerRuntime, image_ids: list[uuid.UUID]) -> GradingReport:
    """Grade these images (those still pending); safe to call again with the same ids."""
    settings = runtime.settings
    report = GradingReport()

    def claim() -> list[Claim]:
        with runtime.sessions.begin() as session:
            return claim_images(
                session, image_ids, max_attempts=settings.max_attempts, lease_s=settings.lease_s
            )

    claims = with_db_retry(claim, budget_s=settings.db_retry_s)
    report.skipped = len(set(image_ids)) - len(claims)
    if not claims:
        return report
    claims += gather_company(runtime, len(claims))
    report.claimed = len(claims)

    def note_progress() -> None:
        # A transaction of its own: batch row after image rows would invert the API's order.
        manifest = runtime.model.manifest
        with runtime.sessions.begin() as session:
            batch_ids = {c.batch_id for c in claims}
            mark_batches_processing(session, batch_ids)
            record_batch_model(session, batch_ids, manifest.name, manifest.version, manifest.sha256)

    with_db_retry(note_progress, budget_s=settings.db_retry_s)

    known = with_db_retry(lambda: known_outcomes(runtime, claims), budget_s=settings.db_retry_s)
    firsts: dict[tuple[uuid.UUID, str], Claim] = {}
    for c in claims:
        if c.content not in known:
            firsts.setdefault(c.content, c)

    clock = time.perf_counter()
    failed_firsts = _decode_and_infer(runtime, list(firsts.values()), known, report)
    report.timings_ms["decode_and_infer"] = (time.perf_counter() - clock) * 1000

    errors = {c.content: error for c, error in failed_firsts}
    predictions = [(c, known[c.content]) for c in claims if c.content in known]
    failures = [(c, errors[c.content]) for c in claims if c.content in errors]
    per_image_ms = report.timings_ms["infer"] / max(report.inferred, 1)

    clock = time.perf_counter()
    recorded = with_db_retry(
        lambda: record_outcomes(runtime, claims, predictions, failures, per_image_ms),
        budget_s=settings.db_retry_s,
    )
    report.graded, report.ungradable, report.failed = (
        recorded.graded,
        recorded.ungradable,
        recorded.failed,
    )
    report.fenced_out = len(claims) - recorded.graded - recorded.ungradable - recorded.failed
    report.timings_ms["write"] = (time.perf_counter() - clock) * 1000
    if recorded.to_explain:
        runtime.request_heatmaps(recorded.to_explain)
    return report


def gather_company(runtime: WorkerRuntime, have: int) -> list[Claim]:
    """Fill a short model batch with other queued images, waiting at most ``batch_wait_ms``.

    Tasks are formed per upload, so a trickle of small uploads would otherwise reach the
    model one or two images at a time. Images taken here are claimed like any others; when
    their own tasks arrive they find them graded and skip them.
    """
    settings = runtime.settings
    wanted = runtime.model.batch_size - have
    deadline = time.monotonic() + settings.batch_wait_ms / 1000
    company: list[Claim] = []
    while wanted > len(company) and settings.batch_wait_ms > 0:

        def claim_more(limit: int = wanted - len(company)) -> list[Claim]:
            with runtime.sessions.begin() as session:
                queued = session.scalars(
                    select(Image.id)
                    .where(Image.state == ImageState.QUEUED)
                    .order_by(Image.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
                return claim_images(
                    session,
                    list(queued),
                    max_attempts=settings.max_attempts,
                    lease_s=settings.lease_s,
                )

        company += with_db_retry(claim_more, budget_s=settings.db_retry_s)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if len(company) < wanted:
            time.sleep(min(0.02, remaining))
    return company


def claim_images(
    session: Session, image_ids: list[uuid.UUID], *, max_attempts: int, lease_s: int
) -> list[Claim]:
    """Move claimable images to ``processing`` with a new attempt; fail the exhausted ones.

    Claimable means ``queued``, or ``processing`` under a lease that has run out: an image
    another worker is still grading is left alone, so a duplicate delivery does not
    re-run it (and a superseded claim is fenced out by its attempt number anyway).
    """
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        return []
    now = utcnow()
    claimable = or_(
        Image.state == ImageState.QUEUED,
        and_(
            Image.state == ImageState.PROCESSING,
            or_(Image.lease_expires_at.is_(None), Image.lease_expires_at < now),
        ),
    )
    fail_exhausted(session, and_(Image.id.in_(ids), claimable), max_attempts, now)
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(ids), claimable)
        .values(
            state=ImageState.PROCESSING,
            attempts=Image.attempts + 1,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
        .returning(
            Image.id,
            Image.batch_id,
            Image.programme_id,
            Image.sha256,
            Image.storage_path,
            Image.attempts,
        )
        .execution_options(synchronize_session=False)
    ).all()
    claims = [Claim(*row) for row in rows]
    order = {image_id: position for position, image_id in enumerate(ids)}
    return sorted(claims, key=lambda c: order[c.image_id])


@dataclass(frozen=True)
class Prepared:
    """One decoded image: its quality, and the model input when it is gradable."""

    quality: QualityReport
    pixels: np.ndarray | None


def _decode_and_infer(
    runtime: WorkerRuntime,
    claims: list[Claim],
    outcomes: dict[tuple[uuid.UUID, str], ImageOutcome],
    report: GradingReport,
) -> list[tuple[Claim, ImageDecodeError]]:
    """Run the model batch by batch while the decoding threads prepare the next batches.

    Every image is handed to the decoder pool at once; this thread, which alone owns the
    model, takes them back a model batch at a time, so decoding batch k+1 overlaps
    inference on batch k. Outcomes are added to ``outcomes`` by programme and content hash:
    ungradable straight from the quality check, graded after the model. An image whose
    output is unusable fails alone.
    """
    batch_size = runtime.model.batch_size
    manifest = runtime.model.manifest
    futures = [runtime.decoder.submit(prepare_claim, runtime, claim) for claim in claims]
    failures: list[tuple[Claim, ImageDecodeError]] = []
    waited = inferred_ms = 0.0
    for start in range(0, len(claims), batch_size):
        clock = time.perf_counter()
        pixels: list[np.ndarray] = []
        decoded: list[tuple[Claim, QualityReport]] = []
        for claim, future in zip(
            claims[start : start + batch_size], futures[start : start + batch_size], strict=True
        ):
            prepared = future.result()
            if isinstance(prepared, ImageDecodeError):
                failures.append((claim, prepared))
            elif prepared.pixels is None:
                outcomes[claim.content] = _ungradable(prepared.quality)
            else:
                pixels.append(prepared.pixels)
                decoded.append((claim, prepared.quality))
        waited += time.perf_counter() - clock
        if not decoded:
            continue
        clock = time.perf_counter()
        outputs = runtime.model.predict(manifest.preprocessor.normalise(np.stack(pixels)))
        inferred_ms += (time.perf_counter() - clock) * 1000
        for (claim, quality), probs in zip(decoded, outputs, strict=True):
            try:
                grade = interpret_probabilities(probs, manifest)
            except ValueError as error:
                failures.append((claim, ImageDecodeError("invalid_model_output", str(error))))
                continue
            outcomes[claim.content] = ImageOutcome(True, (), quality.measures, grade)
        report.inferred += len(decoded)
    report.timings_ms["decode_wait"] = waited * 1000
    report.timings_ms["infer"] = inferred_ms
    return failures


def _ungradable(quality: QualityReport) -> ImageOutcome:
    return ImageOutcome(False, quality.reasons, quality.measures, None)


def prepare_claim(runtime: WorkerRuntime, claim: Claim) -> Prepared | ImageDecodeError:
    """Read, decode, check and preprocess one image on a decoder thread; errors are values."""
    preprocessor = runtime.model.manifest.preprocessor
    try:
        data = runtime.store.read(claim.storage_path)
        image = preprocessor.decode(
            data, max_pixels=runtime.settings.max_image_pixels, budget=runtime.pixel_budget
        )
        if not runtime.settings.quality_check:
            return Prepared(UNCHECKED, preprocessor.pixels(image))
        quality = assess_quality(image, runtime.quality_thresholds)
        if not quality.gradable:
            return Prepared(quality, None)
        return Prepared(quality, preprocessor.pixels(image))
    except FileNotFoundError:
        return ImageDecodeError("missing_file", "the stored image file is missing")
    except ImageDecodeError as error:
        return error
    except Exception as error:  # one unreadable file must never fail its neighbours
        log.exception("image %s could not be prepared", claim.image_id)
        return ImageDecodeError(
            "unreadable_image", f"the image could not be read or decoded ({type(error).__name__})"
        )


def prepare_claims(
    runtime: WorkerRuntime, claims: list[Claim]
) -> tuple[list[tuple[Claim, Prepared]], list[tuple[Claim, ImageDecodeError]]]:
    """Prepare each claimed image in order (no overlap); for tools and tests."""
    prepared: list[tuple[Claim, Prepared]] = []
    failures: list[tuple[Claim, ImageDecodeError]] = []
    for claim in claims:
        outcome = prepare_claim(runtime, claim)
        if isinstance(outcome, ImageDecodeError):
            failures.append((claim, outcome))
        else:
            prepared.append((claim, outcome))
    return prepared, failures


def infer_prepared(
    runtime: WorkerRuntime, prepared: list[tuple[Claim, Prepared]]
) -> list[tuple[Claim, ImageOutcome]]:
    """Outcomes for prepared images in one go (no overlap); for tools and tests."""
    manifest = runtime.model.manifest
    outcomes = {c.image_id: _ungradable(p.quality) for c, p in prepared if p.pixels is None}
    gradable = [(c, p) for c, p in prepared if p.pixels is not None]
    if gradable:
        inputs = manifest.preprocessor.normalise(np.stack([p.pixels for _, p in gradable]))
        for (claim, p), probs in zip(gradable, runtime.model.predict(inputs), strict=True):
            grade = interpret_probabilities(probs, manifest)
            outcomes[claim.image_id] = ImageOutcome(True, (), p.quality.measures, grade)
    return [(c, outcomes[c.image_id]) for c, _ in prepared]
