"""Multipart uploads streamed into local spools, hashed on the way.

Werkzeug asks the request for a file object per uploaded part; ours writes into a local
temporary file in the store's spool folder (inside the folder of a file store, so placing
it is a rename; a local folder for an S3 store, from which it is sent), so an image is never
held whole in memory. Each image keeps the path its client sent, relative to the folder
submitted (``common.filenames``), and metadata rows are matched against it. A DICOM file's
header fills in what its metadata row does not say (:func:`with_dicom_header`).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass, replace
from datetime import date
from typing import IO, Any

from flask import Request, current_app
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from api.errors import ApiError, echo_client_values
from common.dicom_header import read_header
from common.filenames import relative_path, resolve_rows
from common.storage.base import HashingSpool, ObjectStore

MAX_PATIENT_ID_LENGTH = 128
METADATA_COLUMNS = ("filename", "patient_id", "laterality")
_LATERALITY = {"l": "L", "left": "L", "os": "L", "r": "R", "right": "R", "od": "R"}


class _LimitedSpool(HashingSpool):
    """A spool that stops an oversized part instead of filling the disk."""

    def __init__(self, store: ObjectStore, limit: int) -> None:
        super().__init__(store.spool_dir)
        self._limit = limit

    def write(self, data: bytes) -> int:
        if self.size + len(data) > self._limit:
            self.discard()
            raise RequestEntityTooLarge(f"a file exceeds the limit of {self._limit} bytes")
        return super().write(data)


class StreamingRequest(Request):
    """A request whose file parts are spooled into the image store while hashing."""

    spools: list[HashingSpool]

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        state = current_app.extensions["retinaq"]
        spool = _LimitedSpool(state.store, state.settings.max_image_bytes)
        if not hasattr(self, "spools"):
            self.spools = []
        self.spools.append(spool)
        # werkzeug's stub asks for IO[bytes]; the spool is file-like, not an IO subclass.
        return spool  # type: ignore[return-value]

    def make_form_data_parser(self) -> FormDataParser:
        """Werkzeug's parser, made loud: by default a malformed body reads as an empty form."""
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except ValueError as exc:
            raise ApiError(400, "invalid_multipart", _multipart_problem(exc)) from exc

    def discard_spools(self, store: ObjectStore) -> None:
        """Delete spools that were not placed in the store, and what was staged of them."""
        for spool in getattr(self, "spools", []):
            store.discard(spool)


def _multipart_problem(exc: ValueError) -> str:
    """What was wrong with the body, naming the part when its headers are not UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        # Werkzeug decodes part headers as UTF-8 and, silently, drops the whole form on failure.
        header = exc.object.decode("utf-8", "backslashreplace")[:300]
        return f"a multipart part's headers are not UTF-8 ({header}); send filenames as UTF-8"
    return f"the multipart body is malformed: {exc}"


@dataclass(frozen=True)
class ImageMetadata:
    """Per-image facts a programme may attach through the metadata CSV, or that a DICOM
    file's header gives (the study and camera only ever come from a header)."""

    patient_id: str | None
    laterality: str | None
    study_instance_uid: str | None = None
    study_date: date | None = None
    device: str | None = None


NO_METADATA = ImageMetadata(None, None)


def with_dicom_header(facts: ImageMetadata, spool: HashingSpool) -> ImageMetadata:
    """``facts`` completed from the spooled file's DICOM header: the CSV wins where both
    say something. Any other file, or a header that cannot be read, adds nothing.

    Only the header is read (never the pixel data), and no value of it is logged.
    """
    spool.flush()  # read through a handle of our own, leaving the spool's position alone
    with spool.path.open("rb") as stream:
        header = read_header(stream)
    if header is None:
        return facts
    return replace(
        facts,
        patient_id=facts.patient_id or header.patient_id,
        laterality=facts.laterality or header.laterality,
        study_instance_uid=header.study_instance_uid,
        study_date=header.study_date,
        device=header.device,
    )


def display_filename(raw: str | None) -> str:
    """The client's relative path as a safe name and metadata key (never a path on disk)."""
    return relative_path(raw)


def match_metadata(
    metadata: dict[str, ImageMetadata], names: list[str]
) -> dict[str, ImageMetadata]:
    """Each uploaded name's metadata; 422 for a row naming no file, or more than one."""
    resolution = resolve_rows(metadata, names)
    if resolution.ambiguous:
        raise ApiError(422, "metadata_ambiguous", "; ".join(resolution.ambiguous[:5]))
    if resolution.unmatched:
        raise ApiError(
            422,
            "metadata_unmatched",
            "metadata lists files not in this request: "
            + echo_client_values(sorted(resolution.unmatched)),
        )
    return {name: metadata[key] for name, key in resolution.matches.items()}


def parse_metadata_csv(data: bytes) -> dict[str, ImageMetadata]:
    """Parse ``filename,patient_id,laterality`` rows; 422 naming the line on any error."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_metadata", "metadata is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "filename" not in header:
        raise ApiError(422, "invalid_metadata", "line 1: metadata needs a 'filename' column")
    unknown = [h for h in header if h not in METADATA_COLUMNS]
    if unknown:
        raise ApiError(
            422,
            "invalid_metadata",
            f"line 1: unknown column(s) {echo_client_values(unknown)}; allowed: "
            + ", ".join(METADATA_COLUMNS),
        )
    reader.fieldnames = header
    rows: dict[str, ImageMetadata] = {}
    try:
        for row in reader:
            rows.update(_metadata_row(row, reader.line_num, rows))
    except csv.Error as exc:
        raise ApiError(422, "invalid_metadata", f"line {reader.line_num}: {exc}") from exc
    return rows


def _metadata_row(
    row: dict[str, Any], line: int, seen: dict[str, ImageMetadata]
) -> dict[str, ImageMetadata]:
    if None in row:
        raise ApiError(422, "invalid_metadata", f"line {line}: more fields than columns")
    filename = display_filename(row.get("filename"))
    if not (row.get("filename") or "").strip():
        raise ApiError(422, "invalid_metadata", f"line {line}: filename is empty")
    if filename in seen:
        raise ApiError(
            422,
            "invalid_metadata",
            f"line {line}: {echo_client_values([filename])} is listed twice",
        )
    patient_id = (row.get("patient_id") or "").strip() or None
    if patient_id is not None and len(patient_id) > MAX_PATIENT_ID_LENGTH:
        raise ApiError(
            422,
            "invalid_metadata",
            f"line {line}: patient_id exceeds {MAX_PATIENT_ID_LENGTH} characters",
        )
    if patient_id is not None and any(unicodedata.category(ch) == "Cc" for ch in patient_id):
        raise ApiError(
            422, "invalid_metadata", f"line {line}: patient_id contains control characters"
        )
    raw_side = (row.get("laterality") or "").strip().lower()
    laterality = _LATERALITY.get(raw_side) if raw_side else None
    if raw_side and laterality is None:
        raise ApiError(
            422,
            "invalid_metadata",
            f"line {line}: laterality must be L or R, not {echo_client_values([raw_side])}",
        )
    return {filename: ImageMetadata(patient_id, laterality)}


def uploaded_images(
    request: Request, max_files: int, *, creating: bool = False
) -> list[FileStorage]:
    """The ``images`` parts of a multipart request, validated for count and presence;
    ``creating`` (a new batch) also admits the batch's own ``callback_url``."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type", "send images as multipart/form-data 'images' parts"
        )
    _refuse_unknown_or_repeated_parts(request, _CREATE_FIELD_PARTS if creating else _FIELD_PARTS)
    files = request.files.getlist("images")
    if not files:
        raise ApiError(422, "no_images", "the request has no 'images' file parts")
    if len(files) > max_files:
        raise ApiError(
            413,
            "too_many_files",
            f"{len(files)} files in one request; the limit is {max_files}",
        )
    return files


def uploaded_metadata(request: Request, max_bytes: int) -> dict[str, ImageMetadata]:
    """The optional ``metadata`` CSV part (file or plain field)."""
    part = request.files.get("metadata")
    if part is not None:
        data = part.stream.read(max_bytes + 1)
    else:
        data = request.form.get("metadata", "").encode()
    if not data:
        return {}
    if len(data) > max_bytes:
        raise ApiError(413, "metadata_too_large", f"metadata exceeds {max_bytes} bytes")
    return parse_metadata_csv(data)


_FILE_PARTS = frozenset({"images", "metadata"})
_FIELD_PARTS = frozenset({"metadata", "reference", "explain"})
# A batch's callback URL is given when it is created, never by a request adding images.
_CREATE_FIELD_PARTS = _FIELD_PARTS | {"callback_url"}


def _refuse_unknown_or_repeated_parts(request: Request, fields: frozenset[str]) -> None:
    """422 for parts the API does not know (a misspelt ``image`` would be lost) and for a
    second metadata part (which of the two would apply?)."""
    unknown = sorted((set(request.files) - _FILE_PARTS) | (set(request.form) - fields))
    if unknown:
        known = ", ".join(["images", *sorted(fields)])
        raise ApiError(
            422,
            "unknown_fields",
            f"unknown part(s) {echo_client_values(unknown)}; send only {known}",
        )
    if len(request.files.getlist("metadata")) + len(request.form.getlist("metadata")) > 1:
        raise ApiError(422, "duplicate_field", "send one metadata part")
