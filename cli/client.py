"""HTTP client for the v1 API, used by ``retinaq submit/status/results`` and the demo.

It follows the links the API returns instead of building URLs, but only within the
origin it was given: its API key never goes to a host a ``Location`` header or a link
names (a reflected ``Host`` header could point those anywhere). It streams files from
disk in chunks, naming each by its path relative to the folder given, and honours
``Retry-After`` while waiting.
"""

from __future__ import annotations

import csv
import mimetypes
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.csv_export import metadata_csv, write_spreadsheet_csv
from common.filenames import relative_path, resolve_rows

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".gif", ".webp"}
FINISHED = {"completed", "completed_with_errors"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
RESULT_COLUMNS = (
    "image_id",
    "filename",
    "patient_id",
    "laterality",
    "state",
    "gradable",
    "ungradable_reasons",
    "grade",
    "grade_name",
    "expected_grade",
    "referable",
    "referable_threshold",
    "confidence",
    "model_name",
    "model_version",
    "model_sha256",
    "preprocessing_version",
    "error_code",
    "error_message",
)


class ApiClientError(RuntimeError):
    """The API answered with an error (or pointed elsewhere); carries its code and message."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code


class MetadataError(ValueError):
    """The metadata CSV cannot be applied to the files found; nothing was uploaded."""


@dataclass(frozen=True)
class ImageFile:
    """A file to upload and the name the API will know it by (its path in the folder given)."""

    path: Path
    name: str


@dataclass(frozen=True)
class Submission:
    """A submitted batch: its id and status URL (from the Location header)."""

    batch_id: str
    status_url: str
    image_count: int


def find_images(paths: list[Path]) -> list[ImageFile]:
    """Image files given directly (named by name) or found in folders (by path inside them).

    Paths keep folder-per-patient trees apart: ``P001/left.jpg`` is not ``P002/left.jpg``.
    """
    found: list[ImageFile] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                ImageFile(p, relative_path(p.relative_to(path).as_posix()))
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            found.append(ImageFile(path, relative_path(path.name)))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return found


def metadata_rows(csv_path: Path | None) -> dict[str, dict[str, str]]:
    """The metadata CSV keyed by its (normalised) filename column, as the API will read it."""
    if csv_path is None:
        return {}
    rows: dict[str, dict[str, str]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if "filename" not in (reader.fieldnames or []):
            raise MetadataError(f"{csv_path} line 1: metadata needs a 'filename' column")
        for row in reader:
            key = relative_path(row["filename"])
            if key in rows:
                raise MetadataError(f"{csv_path} line {reader.line_num}: {key!r} is listed twice")
            rows[key] = row
    return rows


def resolve_metadata(
    rows: dict[str, dict[str, str]], files: list[ImageFile]
) -> dict[str, dict[str, str]]:
    """Each file's metadata row, keyed and renamed by the file's upload name.

    Resolved over the whole submission, by the API's own rule, before anything is sent:
    an upload in chunks must not let a bare ``left.jpg`` row match once per chunk.
    Rows naming no file found are left out, so one CSV may describe several submissions.
    """
    resolution = resolve_rows(rows, [f.name for f in files])
    if resolution.ambiguous:
        raise MetadataError("; ".join(resolution.ambiguous[:5]))
    return {name: {**rows[key], "filename": name} for name, key in resolution.matches.items()}


class ApiClient:
    """A thin, typed wrapper over the v1 API."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
        )
        self._origin = _origin(self._http.base_url)

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, url, **kwargs)
        target = _origin(request.url)
        if target != self._origin:
            raise ApiClientError(
                None,
                "foreign_origin",
                f"refusing to send the API key to {target}: the API at {self._origin} "
                "pointed there (a Location header or link); if the API really lives there, "
                "give that as --api-url",
            )
        response = self._http.send(request)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiClientError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiClientError(
                    response.status_code, "http_error", response.text[:200]
                ) from None
        return response

    def submit(
        self,
        files: list[ImageFile],
        *,
        metadata: dict[str, dict[str, str]] | None = None,
        reference: str | None = None,
        chunk_size: int = 64,
        on_progress: Callable[[int], None] | None = None,
    ) -> Submission:
        """Upload files; one request when they fit a chunk, else an open batch filled in chunks.

        ``metadata`` is :func:`metadata_rows`' output; it is resolved against all the files
        first, so an ambiguous row raises :class:`MetadataError` before anything is sent.
        """
        metadata = resolve_metadata(metadata or {}, files)
        chunks = [files[i : i + chunk_size] for i in range(0, len(files), chunk_size)]
        if len(chunks) == 1:
            response = self._upload("/v1/batches", chunks[0], metadata, reference)
            if on_progress:
                on_progress(len(chunks[0]))
            body = response.json()
            return Submission(body["id"], response.headers["Location"], body["image_count"])
        created = self._request("POST", "/v1/batches", json={"reference": reference, "open": True})
        body = created.json()
        for chunk in chunks:
            self._upload(body["links"]["add_images"], chunk, metadata, None)
            if on_progress:
                on_progress(len(chunk))
        closed = self._request("POST", body["links"]["close"]).json()
        return Submission(closed["id"], created.headers["Location"], closed["image_count"])

    def _upload(
        self,
        url: str,
        chunk: list[ImageFile],
        metadata: dict[str, dict[str, str]],
        reference: str | None,
    ) -> httpx.Response:
        with ExitStack() as stack:
            parts: list[tuple[str, tuple[str, Any, str]]] = []
            for file in chunk:
                mime = mimetypes.guess_type(file.path.name)[0] or "application/octet-stream"
                handle = stack.enter_context(file.path.open("rb"))
                parts.append(("images", (file.name, handle, mime)))
            rows = [metadata[f.name] for f in chunk if f.name in metadata]
            if rows:
                parts.append(("metadata", ("metadata.csv", metadata_csv(rows), "text/csv")))
            data = {"reference": reference} if reference else None
            return self._request("POST", url, files=parts, data=data)

    def status(self, url_or_id: str) -> tuple[dict[str, Any], float | None]:
        """A batch's status and the server's ``Retry-After`` hint (seconds)."""
        url = url_or_id if "/" in url_or_id else f"/v1/batches/{url_or_id}"
        response = self._request("GET", url)
        retry_after = response.headers.get("Retry-After")
        return response.json(), float(retry_after) if retry_after else None

    def wait(
        self,
        status_url: str,
        *,
        timeout: float = 3600.0,
        max_interval: float = 30.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the batch finishes, sleeping as long as the server asks."""
        deadline = time.monotonic() + timeout
        while True:
            body, retry_after = self.status(status_url)
            if on_status:
                on_status(body)
            if body["state"] in FINISHED:
                return body
            if time.monotonic() >= deadline:
                raise TimeoutError(f"batch {body['id']} still {body['state']} after {timeout}s")
            time.sleep(min(retry_after or 1.0, max_interval))

    def iter_results(self, batch_id: str, *, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """Every per-image result row, following ``links.next``."""
        url: str | None = f"/v1/batches/{batch_id}/results"
        params: dict[str, Any] | None = {"limit": page_size}
        while url:
            page = self._request("GET", url, params=params).json()
            yield from page["items"]
            url, params = page["links"].get("next"), None


def flatten_result(row: dict[str, Any]) -> dict[str, Any]:
    """One results-listing row as a flat CSV record."""
    model = row.get("model") or {}
    error = row.get("error") or {}
    return {
        "image_id": row["image_id"],
        "filename": row["filename"],
        "patient_id": row.get("patient_id") or "",
        "laterality": row.get("laterality") or "",
        "state": row["state"],
        "gradable": "" if row.get("gradable") is None else str(row["gradable"]).lower(),
        "ungradable_reasons": ";".join(row.get("ungradable_reasons") or []),
        "grade": "" if row.get("grade") is None else row["grade"],
        "grade_name": row.get("grade_name") or "",
        "expected_grade": (
            "" if row.get("expected_grade") is None else f"{row['expected_grade']:.3f}"
        ),
        "referable": "" if row.get("referable") is None else str(row["referable"]).lower(),
        "referable_threshold": (
            "" if row.get("referable_threshold") is None else row["referable_threshold"]
        ),
        "confidence": "" if row.get("confidence") is None else f"{row['confidence']:.4f}",
        "model_name": model.get("name", ""),
        "model_version": model.get("version", ""),
        "model_sha256": model.get("sha256", ""),
        "preprocessing_version": row.get("preprocessing_version") or "",
        "error_code": error.get("code", ""),
        "error_message": error.get("message", ""),
    }


def write_results_csv(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write flattened result rows to ``out``, safe to open in a spreadsheet."""
    return write_spreadsheet_csv(out, RESULT_COLUMNS, (flatten_result(r) for r in rows))


def _origin(url: httpx.URL) -> str:
    """``scheme://host:port``, with the scheme's default port spelled out."""
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    return f"{url.scheme}://{url.host}:{port}"
