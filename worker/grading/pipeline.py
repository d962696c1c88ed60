"""Grading a micro-batch of images: claim, decode, predict, record, all guarded by state.

Images are claimed under a lease (:mod:`common.lifecycle.claims`) that a thread renews
until the task ends (:mod:`worker.grading.lease_keeper`), prepared on decoder
threads by :func:`common.imaging.prepare.prepare_image` (an image the quality check
refuses becomes ``ungradable`` with its reasons and never reaches the model), graded a
model batch at a time, and recorded for the claims still ours
(:mod:`worker.grading.recording`). A bad image fails alone. Identical bytes are graded
once: within a task by content hash, and across tasks by reusing the result the same
model already gave the same programme.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from common.imaging.decode import ImageDecodeError
from common.imaging.prepare import PreparedImage, prepare_image
from common.lifecycle.claims import Claim, claim_images, claim_queued
from common.lifecycle.progress import mark_batches_processing, record_batch_model
from common.screening.outcome import ImageOutcome, interpret_probabilities
from common.screening.quality import QualityReport
from common.storage.base import StoreUnavailable
from worker.db_retry import with_db_retry
from worker.grading.lease_keeper import LeaseKeeper
from worker.grading.recording import known_outcomes, record_outcomes

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


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
    with LeaseKeeper(runtime.sessions, claims, lease_s=settings.lease_s) as keeper:
        claims += gather_company(runtime, len(claims), keeper)
        return grade_claimed(runtime, claims, report)


def grade_claimed(
    runtime: WorkerRuntime, claims: list[Claim], report: GradingReport | None = None
) -> GradingReport:
    """Decode, check, infer and record images already claimed; a superseded claim writes
    nothing (it counts as ``fenced_out``). Keeping the leases alive meanwhile is the
    caller's part (:func:`grade_images` holds them in a :class:`LeaseKeeper`)."""
    settings = runtime.settings
    report = report or GradingReport()
    report.claimed = len(claims)

    def note_progress() -> None:
        # A transaction of its own: batch row after image rows would invert the API's order.
        manifest = runtime.model.manifest
        with runtime.sessions.begin() as session:
            batch_ids = {c.batch_id for c in claims}
            mark_batches_processing(session, batch_ids)
            record_batch_model(session, batch_ids, manifest.name, manifest.version, manifest.sha256)

    with_db_retry(note_progress, budget_s=settings.db_retry_s)

    known = with_db_retry(
        lambda: known_outcomes(runtime.recorder, claims), budget_s=settings.db_retry_s
    )
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
        lambda: record_outcomes(runtime.recorder, claims, predictions, failures, per_image_ms),
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


def gather_company(runtime: WorkerRuntime, have: int, keeper: LeaseKeeper) -> list[Claim]:
    """Fill a short model batch with other queued images, waiting at most ``batch_wait_ms``.

    Tasks are formed per upload, so a trickle of small uploads would otherwise reach the
    model one or two images at a time. Images taken here are claimed like any others, and
    their leases kept by ``keeper`` from the moment they are taken; when their own tasks
    arrive they find them graded and skip them.
    """
    settings = runtime.settings
    wanted = runtime.model.batch_size - have
    deadline = time.monotonic() + settings.batch_wait_ms / 1000
    company: list[Claim] = []
    while wanted > len(company) and settings.batch_wait_ms > 0:

        def claim_more(limit: int = wanted - len(company)) -> list[Claim]:
            with runtime.sessions.begin() as session:
                return claim_queued(
                    session, limit, max_attempts=settings.max_attempts, lease_s=settings.lease_s
                )

        more = with_db_retry(claim_more, budget_s=settings.db_retry_s)
        keeper.hold(more)
        company += more
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if len(company) < wanted:
            time.sleep(min(0.02, remaining))
    return company


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


def prepare_claim(runtime: WorkerRuntime, claim: Claim) -> PreparedImage | ImageDecodeError:
    """Read, decode, check and preprocess one image on a decoder thread; errors are values."""
    settings = runtime.settings
    try:
        return prepare_image(
            runtime.store.read(claim.storage_path),
            runtime.model.manifest.preprocessor,
            runtime.quality_thresholds if settings.quality_check else None,
            max_pixels=settings.max_image_pixels,
            budget=runtime.pixel_budget,
        )
    except StoreUnavailable:
        raise  # the store, not the image: the whole task is tried again later
    except FileNotFoundError:
        return ImageDecodeError("missing_file", "the stored image file is missing")
    except ImageDecodeError as error:
        return error
    except Exception as error:  # one unreadable file must never fail its neighbours
        log.exception("image %s could not be prepared", claim.image_id)
        return ImageDecodeError(
            "unreadable_image", f"the image could not be read or decoded ({type(error).__name__})"
        )
