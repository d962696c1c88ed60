"""Grading micro-batches of images: claim, decode, predict, record, all guarded by state.

A task claims a model batch at a time from the programmes in turn
(:mod:`common.lifecycle.turns`), the next micro-batch decoding while the model runs this
one. Images are claimed under a lease (:mod:`common.lifecycle.claims`) that a thread renews
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
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from common.imaging.decode import ImageDecodeError
from common.imaging.prepare import PreparedImage, prepare_image
from common.lifecycle.claims import Claim
from common.lifecycle.progress import mark_batches_processing, record_batch_model
from common.lifecycle.turns import claim_in_turn
from common.screening.outcome import ImageOutcome, interpret_probabilities
from common.screening.quality import QualityReport
from common.storage.base import StoreUnavailable
from worker.db_retry import with_db_retry
from worker.grading.lease_keeper import LeaseKeeper
from worker.grading.recording import known_outcomes, record_outcomes
from worker.metrics import StageClock, observe_recorded

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
    """Grade as many queued images as this task was sent for, programmes in turn.

    A task stands for ``len(image_ids)`` images of work, not for those exact images: it
    claims a model batch at a time from the programmes in turn
    (:mod:`common.lifecycle.turns`), so one programme's backlog never holds another's
    batch back for more than about a micro-batch per worker. Its own images are taken by
    whichever task reaches them first. Safe to run again: only queued images are claimed.
    """
    settings = runtime.settings
    report = GradingReport()
    share = max(len(set(image_ids)), 1)
    with LeaseKeeper(runtime.sessions, [], lease_s=settings.lease_s) as keeper:
        _grade_in_turn(runtime, _micro_batches(runtime, share, keeper, report), report)
    report.skipped = max(0, len(set(image_ids)) - report.claimed)
    return report


def grade_claimed(
    runtime: WorkerRuntime, claims: list[Claim], report: GradingReport | None = None
) -> GradingReport:
    """Decode, check, infer and record images already claimed; a superseded claim writes
    nothing (it counts as ``fenced_out``). Keeping the leases alive meanwhile is the
    caller's part (:func:`grade_images` holds them in a :class:`LeaseKeeper`)."""
    report = report or GradingReport()
    _grade_in_turn(runtime, iter([claims]), report)
    return report


def _micro_batches(
    runtime: WorkerRuntime, share: int, keeper: LeaseKeeper, report: GradingReport
) -> Iterator[list[Claim]]:
    """Claims in turn, a model batch at a time, until ``share`` are taken or none are left.

    Each claim is made only when the pipeline asks for the next micro-batch, so who is
    served next is decided as late as the overlap of decoding and inference allows. A
    first claim short of a model batch looks for company (:func:`gather_company`); a later
    short one means the queue ran dry.
    """
    settings = runtime.settings
    batch_size = runtime.model.batch_size
    taken = 0
    while taken < share:
        wanted = min(batch_size, share - taken)
        clock = time.perf_counter()
        claims = _claim_in_turn(runtime, wanted)
        keeper.hold(claims)
        if taken == 0 and len(claims) < batch_size and settings.batch_wait_ms > 0:
            claims += gather_company(runtime, batch_size - len(claims), keeper)
        _add_time(report, "claim", clock)
        if not claims:
            return
        taken += len(claims)
        yield claims
        if len(claims) < wanted:
            return


def gather_company(runtime: WorkerRuntime, wanted: int, keeper: LeaseKeeper) -> list[Claim]:
    """Fill a short model batch with other queued images, waiting at most ``batch_wait_ms``.

    Tasks are formed per upload, so a trickle of small uploads would otherwise reach the
    model one or two images at a time. Images taken here are claimed like any others, and
    their leases kept by ``keeper`` from the moment they are taken; when their own tasks
    arrive they find them graded and claim whatever else is queued.
    """
    deadline = time.monotonic() + runtime.settings.batch_wait_ms / 1000
    company: list[Claim] = []
    while wanted > len(company):
        more = _claim_in_turn(runtime, wanted - len(company))
        keeper.hold(more)
        company += more
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if len(company) < wanted:
            time.sleep(min(0.02, remaining))
    return company


def _claim_in_turn(runtime: WorkerRuntime, limit: int) -> list[Claim]:
    settings = runtime.settings

    def claim() -> list[Claim]:
        with runtime.sessions.begin() as session:
            return claim_in_turn(
                session, limit, max_attempts=settings.max_attempts, lease_s=settings.lease_s
            )

    return with_db_retry(claim, budget_s=settings.db_retry_s)


@dataclass
class _Staged:
    """A micro-batch whose decoding is under way on the decoder threads."""

    claims: list[Claim]
    known: dict[tuple[uuid.UUID, str], ImageOutcome]
    firsts: list[Claim]  # one claim per content not yet graded: what the model must see
    prepared: list[Future[PreparedImage | ImageDecodeError]]


def _grade_in_turn(
    runtime: WorkerRuntime, micro_batches: Iterator[list[Claim]], report: GradingReport
) -> None:
    """Grade micro-batches in order, the next one decoding while the model runs this one.

    The next micro-batch is claimed and handed to the decoder threads before this one goes
    through the model, so decoding overlaps inference across micro-batches as it does
    within one, and the model never waits for a claim.
    """
    clock = StageClock()
    staged = _stage(runtime, next(micro_batches, None), report)
    while staged is not None:
        following = _stage(runtime, next(micro_batches, None), report)
        _finish(runtime, staged, report)
        clock.observe(report.timings_ms, len(staged.claims))
        staged = following


def _stage(
    runtime: WorkerRuntime, claims: list[Claim] | None, report: GradingReport
) -> _Staged | None:
    """Mark the batches started, look up known outcomes, and start decoding the rest."""
    if not claims:
        return None
    settings = runtime.settings
    clock = time.perf_counter()
    report.claimed += len(claims)

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
    prepared = [runtime.decoder.submit(prepare_claim, runtime, c) for c in firsts.values()]
    _add_time(report, "stage", clock)
    return _Staged(claims, known, list(firsts.values()), prepared)


def _finish(runtime: WorkerRuntime, staged: _Staged, report: GradingReport) -> None:
    """Run the model over a staged micro-batch and record every claim's outcome."""
    settings = runtime.settings
    claims, known = staged.claims, staged.known
    clock = time.perf_counter()
    failed_firsts = _decode_and_infer(runtime, staged, report)
    _add_time(report, "decode_and_infer", clock)

    errors = {c.content: error for c, error in failed_firsts}
    predictions = [(c, known[c.content]) for c in claims if c.content in known]
    failures = [(c, errors[c.content]) for c in claims if c.content in errors]
    per_image_ms = report.timings_ms.get("infer", 0.0) / max(report.inferred, 1)

    clock = time.perf_counter()
    recorded = with_db_retry(
        lambda: record_outcomes(runtime.recorder, claims, predictions, failures, per_image_ms),
        budget_s=settings.db_retry_s,
    )
    report.graded += recorded.graded
    report.ungradable += recorded.ungradable
    report.failed += recorded.failed
    report.fenced_out += len(claims) - recorded.graded - recorded.ungradable - recorded.failed
    observe_recorded(predictions, failures, recorded)
    if recorded.to_explain:
        runtime.request_heatmaps(recorded.to_explain)
    _add_time(report, "write", clock)
    _log_micro_batch(claims, recorded.graded, recorded.ungradable, recorded.failed)


def _log_micro_batch(claims: list[Claim], graded: int, ungradable: int, failed: int) -> None:
    """One line per micro-batch naming the uploads it served: a task grades images of
    whichever programmes are next in turn, so its own header's request id is not enough."""
    log.info(
        "micro-batch of %d image(s): graded=%d ungradable=%d failed=%d",
        len(claims),
        graded,
        ungradable,
        failed,
        extra={
            "images": len(claims),
            "graded": graded,
            "ungradable": ungradable,
            "failed": failed,
            "image_ids": [str(c.image_id) for c in claims],
            "batch_ids": sorted({str(c.batch_id) for c in claims}),
            "request_ids": sorted({c.request_id for c in claims if c.request_id}),
        },
    )


def _add_time(report: GradingReport, stage: str, since: float) -> None:
    report.timings_ms[stage] = (
        report.timings_ms.get(stage, 0.0) + (time.perf_counter() - since) * 1000
    )


def _decode_and_infer(
    runtime: WorkerRuntime, staged: _Staged, report: GradingReport
) -> list[tuple[Claim, ImageDecodeError]]:
    """Run the model batch by batch as the decoding threads hand the images back.

    This thread, which alone owns the model, takes the prepared images back a model batch
    at a time, so decoding batch k+1 overlaps inference on batch k. Outcomes are added to
    ``staged.known`` by programme and content hash: ungradable straight from the quality
    check, graded after the model. An image whose output is unusable fails alone.
    """
    batch_size = runtime.model.batch_size
    manifest = runtime.model.manifest
    claims, futures, outcomes = staged.firsts, staged.prepared, staged.known
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
    report.timings_ms["decode_wait"] = report.timings_ms.get("decode_wait", 0.0) + waited * 1000
    report.timings_ms["infer"] = report.timings_ms.get("infer", 0.0) + inferred_ms
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
        log.exception(
            "image %s could not be prepared",
            claim.image_id,
            extra={"request_id": claim.request_id, "batch_id": str(claim.batch_id)},
        )
        return ImageDecodeError(
            "unreadable_image", f"the image could not be read or decoded ({type(error).__name__})"
        )
