"""The ``/v1`` request and response shapes as pydantic models, for the OpenAPI document.

The JSON body and query models are what the views validate against (``api.docs.spec``);
the multipart upload is only described here, its parts being checked one by one as they
stream in (``api.uploads``). Response models describe what ``api.representations`` and
the views write, field for field: they forbid extra keys, so a field added there without
one here fails the schema tests.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

from api.cursors import MAX_CURSOR_LENGTH
from api.flags import parse_flag
from common.db.tables import BatchState, ImageState, WebhookState

# The views' own limit; tests/api/test_openapi.py checks that the two agree.
MAX_REFERENCE_LENGTH = 200


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------


def _printable_reference(value: str) -> str:
    # Cc: NUL (which PostgreSQL cannot store) and other control characters; Cs: lone
    # surrogates from a JSON "\ud800", which are not encodable as UTF-8 at all.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise PydanticCustomError(
            "invalid_reference", "reference must not contain control characters"
        )
    return value


def _flag_text(value: str) -> str:
    try:
        parse_flag(value)
    except ValueError:
        raise PydanticCustomError("flag", "not a yes/no value") from None
    return value


def _true(value: bool) -> bool:
    # StrictBool: JSON's 1 is not true, as it never was for "open".
    if not value:
        raise PydanticCustomError("open_required", "open must be true")
    return value


def _absent_when_empty(value: object) -> object:
    # ``?limit=`` and ``?cursor=`` have always meant the default and the first page.
    return None if value == "" else value


Reference = Annotated[
    str,
    Field(max_length=MAX_REFERENCE_LENGTH, description="The client's label for the batch."),
    AfterValidator(_printable_reference),
]
FlagText = Annotated[str, AfterValidator(_flag_text)]


class OpenBatchRequest(_Closed):
    """A JSON body creates an open batch, to which images are added later."""

    open: Annotated[StrictBool, AfterValidator(_true)] = Field(
        description="Must be true: a JSON body creates an open batch.",
        json_schema_extra={"const": True},
    )
    reference: Reference | None = None
    explain: StrictBool | FlagText | None = Field(
        default=None,
        description="Make a heat map for every image, not only referable and borderline ones.",
    )
    callback_url: str | None = Field(
        default=None,
        description="HTTPS URL that receives the batch's signed webhook events (the "
        "programme needs a signing secret: retinaq admin set-webhook).",
    )


class ImagesUpload(BaseModel):
    """Images for an open batch as ``multipart/form-data`` parts."""

    images: list[bytes] = Field(
        description="One part per image (JPEG, PNG or DICOM), its filename the path relative "
        "to the folder submitted.",
        json_schema_extra={
            "items": {"type": "string", "contentMediaType": "application/octet-stream"}
        },
    )
    metadata: str | None = Field(
        default=None,
        description="CSV with the columns filename, patient_id, laterality (L/R), as a file "
        "part or a plain field.",
    )


class BatchUpload(ImagesUpload):
    """A closed batch, graded at once, as ``multipart/form-data`` parts."""

    reference: Reference | None = None
    explain: str | None = Field(
        default=None,
        description="true/false, 1/0 or yes/no: a heat map for every gradable image.",
    )
    callback_url: str | None = Field(
        default=None, description="As in the JSON body: where webhook events go."
    )


class PageQuery(BaseModel):
    """Keyset pagination; other query parameters are ignored, as they always were."""

    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int | None, BeforeValidator(_absent_when_empty)] = Field(
        default=None, ge=1, description="Page size, 1 to the deployment's maximum."
    )
    cursor: Annotated[str | None, BeforeValidator(_absent_when_empty)] = Field(
        default=None,
        max_length=MAX_CURSOR_LENGTH,
        description="Opaque cursor from the previous page's links.next.",
    )


class DeleteQuery(BaseModel):
    """``purge=true`` also erases the batch's rows and unshared bytes."""

    model_config = ConfigDict(extra="ignore")

    purge: FlagText | None = Field(
        default=None, description="true/false, 1/0 or yes/no; false when absent."
    )


# --- responses ------------------------------------------------------------------------


class ErrorBody(_Closed):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_limit.")
    message: str = Field(description="For people; may change.")


class Error(_Closed):
    """Every failure: ``{"error": {"code", "message"}}``."""

    error: ErrorBody


class ModelRef(_Closed):
    name: str
    version: str
    sha256: str


class BatchModel(ModelRef):
    mixed: bool = Field(description="Another model graded some images too.")


class BatchLinks(_Closed):
    self: str
    results: str
    images: str
    patients: str
    add_images: str | None = None
    close: str | None = None


class BatchBrief(_Closed):
    """A batch as creation, closing and listings return it."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    reference: str | None
    state: BatchState
    image_count: int
    explain: bool
    model: BatchModel | None
    created_at: str | None
    closed_at: str | None
    completed_at: str | None
    links: BatchLinks


class BatchAdded(BatchBrief):
    added: int = Field(description="Images recorded by this request.")


class BatchStatus(BatchBrief):
    """The full status: counts per image state, grade distribution, referable count."""

    counts: dict[str, int]
    grades: dict[str, int]
    referable_count: int


class PageLinks(_Closed):
    self: str
    next: str | None = None


class BatchPageLinks(PageLinks):
    batch: str


class BatchList(_Closed):
    items: list[BatchBrief]
    links: PageLinks


class ImageError(_Closed):
    code: str
    message: str | None


class ImageRecord(_Closed):
    """An image's submission facts and state."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    batch_id: str = Field(json_schema_extra={"format": "uuid"})
    filename: str
    sha256: str
    size_bytes: int
    patient_id: str | None
    laterality: Literal["L", "R"] | None
    study_instance_uid: str | None = Field(description="From a DICOM header, if any.")
    study_date: str | None = Field(description="From a DICOM header (YYYY-MM-DD), if any.")
    device: str | None = Field(description="Camera maker and model, from a DICOM header.")
    state: ImageState
    attempts: int
    error: ImageError | None
    created_at: str | None
    finished_at: str | None


class Grading(_Closed):
    """The outcome: a grade and referral decision, or ungradable with reasons."""

    gradable: bool
    ungradable_reasons: list[str]
    message: str | None
    grade: int | None
    grade_name: str | None
    expected_grade: float | None
    referable: bool | None
    referable_probability: float | None
    referable_threshold: float | None
    confidence: float | None
    probabilities: list[float] | None
    quality: dict[str, object] | None
    model: ModelRef
    preprocessing_version: str | None
    inference_ms: float | None
    graded_at: str | None
    heatmap: str | None


class ImageLinks(_Closed):
    self: str
    batch: str


class ImageDetail(ImageRecord):
    result: Grading | None
    links: ImageLinks


class ResultLinks(_Closed):
    image: str
    heatmap: str | None


class ResultRow(_Closed):
    """A compact per-image row; the grading fields are null until the image is graded."""

    image_id: str = Field(json_schema_extra={"format": "uuid"})
    filename: str
    patient_id: str | None
    laterality: Literal["L", "R"] | None
    state: ImageState
    gradable: bool | None
    ungradable_reasons: list[str] | None
    grade: int | None
    grade_name: str | None
    expected_grade: float | None
    referable: bool | None
    referable_threshold: float | None
    confidence: float | None
    probabilities: list[float] | None
    model: ModelRef | None
    preprocessing_version: str | None
    error: ImageError | None
    links: ResultLinks


class ResultList(_Closed):
    batch_id: str = Field(json_schema_extra={"format": "uuid"})
    items: list[ResultRow]
    links: BatchPageLinks


class ImageList(_Closed):
    batch_id: str = Field(json_schema_extra={"format": "uuid"})
    items: list[ImageRecord]
    links: BatchPageLinks


class Eye(_Closed):
    grade: int | None
    referable: bool
    gradable_images: int
    images: list[str]


class PatientScheme(_Closed):
    """The patient's outcome in the programme's grading scheme's own codes."""

    name: str = Field(description="The grading scheme, e.g. icdr or nhs_desp.")
    code: str | None = Field(description="The worse eye's code; null while pending.")
    eyes: dict[str, str | None]
    maculopathy: str = Field(description="not_assessed: the model never sees the macula.")
    recall_months: int | None = Field(description="Only for a rescreen.")


class PatientRow(_Closed):
    """One patient's roll-up; the worse eye decides."""

    patient_id: str
    outcome: str = Field(
        description="refer, rescreen_<months>m (the scheme's recall interval), recapture "
        "or pending.",
        pattern=r"^(refer|rescreen_\d+m|recapture|pending)$",
    )
    grade: int | None
    eyes: dict[str, Eye]
    scheme: PatientScheme


class PatientList(_Closed):
    batch_id: str = Field(json_schema_extra={"format": "uuid"})
    items: list[PatientRow]
    links: BatchPageLinks


class ModelLinks(_Closed):
    self: str


class ModelEntry(_Closed):
    name: str
    serving: bool = Field(description="The model the workers grade with now.")
    manifest: dict[str, object] = Field(
        description="The model's manifest: metrics, preprocessing, thresholds, file hash."
    )
    links: ModelLinks


class Activation(_Closed):
    name: str
    version: str
    sha256: str
    activated_at: str


class ModelList(_Closed):
    serving: str
    active: Activation | None
    items: list[ModelEntry]


class FhirBundle(BaseModel):
    """A FHIR R4 searchset Bundle: DiagnosticReports per patient, with the Observations
    and Devices they cite; ``link`` ``next`` while more patients follow."""

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["Bundle"]
    type: Literal["searchset"]
    timestamp: str
    link: list[dict[str, str]]
    entry: list[dict[str, object]]


class WebhookAttempt(_Closed):
    attempt: int
    started_at: str | None
    duration_ms: float | None
    status_code: int | None = Field(description="The receiver's HTTP status; null if none.")
    error_code: str | None
    error_message: str | None


class WebhookDelivery(_Closed):
    """One event sent to the batch's callback URL, with every attempt to deliver it."""

    id: str = Field(description="The webhook-id header: the same on every retry.")
    event_type: str
    image_id: str | None = Field(json_schema_extra={"format": "uuid"})
    url: str
    state: WebhookState
    attempt_count: int
    created_at: str | None
    next_attempt_at: str | None
    finished_at: str | None
    attempts: list[WebhookAttempt]


class BatchLogLinks(_Closed):
    self: str
    batch: str


class WebhookDeliveryList(_Closed):
    items: list[WebhookDelivery]
    links: BatchLogLinks
