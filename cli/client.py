"""HTTP client for the v1 API, used by ``retinaq submit/status/results`` and the demo.

It follows the links the API returns instead of building URLs, but only within the
origin it was given: its API key never goes to a host a ``Location`` header or a link
names (a reflected ``Host`` header could point those anywhere). It streams files from
disk in chunks, naming each by its path relative to the folder given, sends every POST
with an ``Idempotency-Key`` so that a retry is answered rather than redone, retries what
:mod:`cli.retries` calls transient, and honours ``Retry-After`` while waiting.
"""

from __future__ import annotations

import csv
import mimetypes
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.csv_export import RESULT_COLUMNS, flatten_result, metadata_csv, write_results_csv
from cli.retries import RetryPolicy, describe, is_transient, retry_after_seconds
from common.dicom_header import MAGIC, PREAMBLE, is_dicom
from common.filenames import relative_path, resolve_rows

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".gif", ".webp"}
FINISHED = {"completed", "completed_with_errors"}
IDEMPOTENCY_HEADER = "Idempotency-Key"
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The results CSV lived here first; callers that import it from the client keep working.
__all__ = ["RESULT_COLUMNS", "flatten_result", "write_results_csv"]


class ApiClientError(RuntimeError):
    """The API answered with an error (or pointed elsewhere); carries its code and message."""

    def __init__(
        self, status: int | None, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class AlreadyDone(Exception):
    """Between two tries, the API was found to hold what the request would have sent."""


class MetadataError(ValueError):
    """The metadata CSV cannot be applied to the files found; nothing was uploaded."""


@dataclass(frozen=True)
class ImageFile:
    """A file to upload and the name the API will know it by (its path in the folder given)."""

    path: Path
    name: str


def find_images(paths: list[Path]) -> list[ImageFile]:
    """Image files given directly (named by name) or found in folders (by path inside them).

    Paths keep folder-per-patient trees apart: ``P001/left.jpg`` is not ``P002/left.jpg``.
    DICOM media (a CD or export from a PACS) name their files without a suffix
    (``IM000001``), so a suffixless file in a folder is taken when it is DICOM by content.
    """
    found: list[ImageFile] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                ImageFile(p, relative_path(p.relative_to(path).as_posix()))
                for p in sorted(path.rglob("*"))
                if p.is_file() and _is_image_file(p)
            )
        elif path.is_file():
            found.append(ImageFile(path, relative_path(path.name)))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return found


def _is_image_file(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix or path.name.upper() == "DICOMDIR":  # the media's index, not a photograph
        return False
    with path.open("rb") as fh:
        return is_dicom(fh.read(PREAMBLE + len(MAGIC)))


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
    """A thin, typed wrapper over the v1 API; ``retry`` says which failures it rides out."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self._origin = _origin(self._http.base_url)
        self._retry = retry or RetryPolicy(attempts=1)

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the API: the only place the key is sent."""
        return self._origin

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        url: str,
        *,
        idempotency_key: str | None = None,
        parts: Callable[[ExitStack], dict[str, Any]] | None = None,
        settled: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with the retry policy. ``parts`` builds the body afresh for every try (file
        handles are spent by the one before); ``settled`` is asked before each retry whether
        the API already did the work, and :class:`AlreadyDone` is raised when it did."""
        if idempotency_key is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), IDEMPOTENCY_HEADER: idempotency_key}
        tries = 0
        unsure = False  # whether the last try may have done its work on the API's side
        try:
            for attempt in self._retry.retrying():
                with attempt:
                    tries += 1
                    if unsure and settled is not None and settled():
                        raise AlreadyDone
                    try:
                        with ExitStack() as stack:
                            extra = parts(stack) if parts else {}
                            return self._once(method, url, **kwargs, **extra)
                    except (httpx.TransportError, ApiClientError) as error:
                        # A refusal (429, 4xx) did nothing; a lost connection or a 5xx may have.
                        unsure = not isinstance(error, ApiClientError) or (error.status or 0) >= 500
                        raise
        except httpx.TransportError as error:
            raise ApiClientError(
                None, "api_unreachable", f"{describe(error)} at {self._origin}{_tries(tries)}"
            ) from error
        except ApiClientError as error:
            if tries > 1 and is_transient(error):
                raise ApiClientError(
                    error.status, error.code, error.message + _tries(tries)
                ) from error
            raise
        raise AssertionError("tenacity returned without an answer or an error")

    def _once(
        self, method: str, url: str, *, stream_to: Path | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One try: refuses a foreign origin, turns an error answer into ApiClientError;
        with ``stream_to`` a success's body is streamed into that file (whole or not at all)."""
        request = self._http.build_request(method, url, **kwargs)
        self._check_origin(request.url)
        response = self._http.send(request, stream=stream_to is not None)
        try:
            if response.status_code < 400 and stream_to is not None:
                _stream_into(response, stream_to)
            else:
                response.read()
        finally:
            response.close()
        if response.status_code >= 400:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            try:
                error = response.json()["error"]
                code, message = str(error["code"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            raise ApiClientError(response.status_code, code, message, retry_after)
        return response

    def _check_origin(self, url: httpx.URL) -> None:
        target = _origin(url)
        if target != self._origin:
            raise ApiClientError(
                None,
                "foreign_origin",
                f"refusing to send the API key to {target}: the API at {self._origin} "
                "pointed there (a Location header or link); if the API really lives there, "
                "give that as --api-url",
            )

    def create_open_batch(self, reference: str | None, key: str) -> tuple[dict[str, Any], str]:
        """A new open batch (its brief) and its status URL, created once however often sent."""
        response = self._request(
            "POST",
            "/v1/batches",
            idempotency_key=key,
            json={"reference": reference, "open": True},
        )
        body: dict[str, Any] = response.json()
        status_url = response.headers.get("Location") or f"{self._origin}/v1/batches/{body['id']}"
        self._check_origin(httpx.URL(status_url))
        return body, status_url

    def add_images(
        self,
        url: str,
        chunk: list[ImageFile],
        metadata: dict[str, dict[str, str]],
        key: str,
        settled: Callable[[], bool] | None = None,
    ) -> dict[str, Any] | None:
        """Add one chunk to an open batch; None when ``settled`` found it already held."""
        try:
            response = self._request(
                "POST",
                url,
                idempotency_key=key,
                parts=lambda stack: {"files": _multipart(stack, chunk, metadata)},
                settled=settled,
            )
        except AlreadyDone:
            return None
        body: dict[str, Any] = response.json()
        return body

    def close_batch(self, url: str, key: str) -> dict[str, Any]:
        """Close an open batch (closing twice is harmless on the API's side too)."""
        body: dict[str, Any] = self._request("POST", url, idempotency_key=key).json()
        return body

    def download(self, url: str, out: Path) -> Path:
        """A GET's body (a server-side export) streamed into ``out``; retried as a whole."""
        self._request("GET", url, stream_to=out, headers={"Accept": "*/*"})
        return out

    def fhir_bundle(self, batch_id: str) -> dict[str, Any]:
        """The batch's FHIR Bundle, its pages (``link`` relation ``next``) joined into one.

        A resource several pages include (the model's Device) is kept once: a Bundle's
        ``fullUrl`` values must be unique.
        """
        bundle: dict[str, Any] = self._request("GET", f"/v1/batches/{batch_id}/fhir").json()
        entries: dict[str, dict[str, Any]] = {}
        page: dict[str, Any] | None = bundle
        while page is not None:
            for entry in page.get("entry") or []:
                entries.setdefault(entry.get("fullUrl") or str(len(entries)), entry)
            following = _next_link(page)
            page = self._request("GET", following).json() if following else None
        bundle["entry"] = list(entries.values())
        links = bundle.get("link") or []
        bundle["link"] = [link for link in links if link.get("relation") == "self"]
        bundle.pop("total", None)  # a page's count, not the whole's
        return bundle

    def held_images(self, batch_id: str, *, retry: bool = True) -> dict[str, str]:
        """Every image the batch holds, ``{filename: sha256}``; one try each page unless
        ``retry`` (a caller that is itself between retries should not nest another)."""
        send = self._request if retry else self._once
        held: dict[str, str] = {}
        # The API's own page size: a deployment may allow less than any size chosen here.
        url: str | None = f"/v1/batches/{batch_id}/images"
        while url:
            page = send("GET", url).json()
            held.update((item["filename"], item["sha256"]) for item in page["items"])
            url = page["links"].get("next")
        return held

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


def _multipart(
    stack: ExitStack, chunk: list[ImageFile], metadata: dict[str, dict[str, str]]
) -> list[tuple[str, tuple[str, Any, str]]]:
    """The ``images`` parts (opened in ``stack``) and the chunk's metadata rows."""
    parts: list[tuple[str, tuple[str, Any, str]]] = []
    for file in chunk:
        mime = mimetypes.guess_type(file.path.name)[0] or "application/octet-stream"
        parts.append(("images", (file.name, stack.enter_context(file.path.open("rb")), mime)))
    rows = [metadata[f.name] for f in chunk if f.name in metadata]
    if rows:
        parts.append(("metadata", ("metadata.csv", metadata_csv(rows), "text/csv")))
    return parts


def _stream_into(response: httpx.Response, out: Path) -> None:
    """Write the body through a temporary file renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as sink:
            for block in response.iter_bytes():
                sink.write(block)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _next_link(bundle: dict[str, Any]) -> str | None:
    """A FHIR Bundle's ``next`` page, if it has one."""
    for link in bundle.get("link") or []:
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _tries(tries: int) -> str:
    return f" (gave up after {tries} tries)" if tries > 1 else ""


def _origin(url: httpx.URL) -> str:
    """``scheme://host:port``, with the scheme's default port spelled out."""
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    return f"{url.scheme}://{url.host}:{port}"
