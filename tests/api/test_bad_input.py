"""Bad input, one test per case, at the level a submitter meets it.

Each test asserts how the service turns the input away — an HTTP status and error code
when the API refuses it, or a ``failed`` image with its error code when the worker does —
and then that the same service still accepts and grades a good photograph. Grading runs
in-process through the worker's pipeline with the bundled model.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, ImageState
from common.db.tables import Image as ImageRow
from common.imaging.decode import ImageDecodeError, decode_image
from common.settings import Settings
from lab.synthetic import generate_fundus
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

Files = list[tuple[bytes, str]]


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _stored_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file()]


def _error(response: Any) -> dict[str, str]:
    assert response.is_json, response.data
    error: dict[str, str] = response.get_json()["error"]
    return error


@pytest.fixture
def submit_and_grade(
    client: FlaskClient,
    auth: dict[str, str],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> Callable[[Files], list[dict[str, Any]]]:
    """Submit files over HTTP, grade them with the worker, return the result rows in order."""

    def run(files: Files) -> list[dict[str, Any]]:
        parts = [(io.BytesIO(data), name) for data, name in files]
        response = client.post("/v1/batches", headers=auth, data={"images": parts})
        assert response.status_code == 202, response.get_json()
        batch = response.get_json()
        with sessions() as session:
            ids = session.scalars(
                select(ImageRow.id)
                .where(ImageRow.batch_id == uuid.UUID(batch["id"]))
                .order_by(ImageRow.id)
            ).all()
        assert len(ids) == len(files)
        report = grade_images(runtime, list(ids))
        assert report.claimed == len(files)
        rows: list[dict[str, Any]] = client.get(batch["links"]["results"], headers=auth).get_json()[
            "items"
        ]
        assert [r["filename"] for r in rows] == [name for _, name in files]
        return rows

    return run


@pytest.fixture
def grades_a_good_image(
    auth: dict[str, str],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
) -> Callable[[FlaskClient], None]:
    """After the bad input, the same service accepts a good photograph and grades it."""

    def check(client: FlaskClient) -> None:
        good = fundus_jpeg(grade=2, seed=404, size=128)
        response = client.post(
            "/v1/batches", headers=auth, data={"images": [(io.BytesIO(good), "good.jpg")]}
        )
        assert response.status_code == 202, response.get_json()
        batch = response.get_json()
        with sessions() as session:
            # A task takes the oldest queued images, and the bad input's may be among them.
            queued = session.scalars(
                select(ImageRow.id).where(ImageRow.state == ImageState.QUEUED)
            ).all()
        assert grade_images(runtime, list(queued)).claimed == len(queued)
        status = client.get(batch["links"]["self"], headers=auth).get_json()
        assert status["state"] == "completed"
        assert status["counts"]["graded"] == 1
        (row,) = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
        assert row["state"] == "graded"
        assert 0 <= row["grade"] <= 4
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-4)

    return check


def _assert_failed(row: dict[str, Any], code: str) -> None:
    assert row["state"] == "failed"
    assert row["grade"] is None
    assert row["error"]["code"] == code
    assert row["error"]["message"]


# --- rejected by the worker, one image at a time ------------------------------------------


def test_empty_file_fails_as_empty_file(
    submit_and_grade: Callable, grades_a_good_image: Callable, client: FlaskClient
) -> None:
    (row,) = submit_and_grade([(b"", "empty.jpg")])
    _assert_failed(row, "empty_file")
    grades_a_good_image(client)


def test_truncated_jpeg_fails_as_corrupt_image(
    submit_and_grade: Callable,
    grades_a_good_image: Callable,
    client: FlaskClient,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    whole = fundus_jpeg(seed=1)
    (row,) = submit_and_grade([(whole[: len(whole) // 3], "cut.jpg")])
    _assert_failed(row, "corrupt_image")
    grades_a_good_image(client)


def test_random_bytes_named_jpg_fail_as_not_an_image(
    submit_and_grade: Callable, grades_a_good_image: Callable, client: FlaskClient
) -> None:
    noise = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    (row,) = submit_and_grade([(noise, "fundus.jpg")])
    _assert_failed(row, "not_an_image")
    grades_a_good_image(client)


def test_text_and_pdf_files_fail_as_not_an_image(
    submit_and_grade: Callable, grades_a_good_image: Callable, client: FlaskClient
) -> None:
    text = b"Patient notes: both eyes photographed, left eye blurred.\n" * 20
    pdf = (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )
    rows = submit_and_grade([(text, "notes.txt"), (pdf, "referral.pdf")])
    for row in rows:
        _assert_failed(row, "not_an_image")
    grades_a_good_image(client)


def test_png_declaring_ten_gigapixels_fails_as_too_many_pixels(
    submit_and_grade: Callable,
    grades_a_good_image: Callable,
    client: FlaskClient,
    settings: Settings,
) -> None:
    (row,) = submit_and_grade([(_png_declaring(100_000, 100_000), "bomb.png")])
    _assert_failed(row, "too_many_pixels")
    assert "10000000000 pixels" in row["error"]["message"]

    # The configured limit is the one that applies, below and above Pillow's own (~89 MP).
    hundred_megapixels = _png_declaring(10_000, 10_000)
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(hundred_megapixels, max_pixels=50_000_000)
    assert refused.value.code == "too_many_pixels"
    assert refused.value.message == "10000x10000 exceeds the limit of 50000000 pixels"
    with pytest.raises(ImageDecodeError) as allowed_size:
        decode_image(hundred_megapixels, max_pixels=120_000_000)
    assert allowed_size.value.code == "corrupt_image", "within the limit, so decoding was tried"
    grades_a_good_image(client)


def test_one_pixel_image_fails_as_too_small(
    submit_and_grade: Callable, grades_a_good_image: Callable, client: FlaskClient
) -> None:
    (row,) = submit_and_grade(
        [(_encode(Image.new("RGB", (1, 1), (200, 90, 40)), "PNG"), "dot.png")]
    )
    _assert_failed(row, "too_small")
    grades_a_good_image(client)


# --- unusual but valid images are graded ----------------------------------------------------


def test_grayscale_cmyk_16_bit_palette_and_alpha_images_are_decoded(
    submit_and_grade: Callable, grades_a_good_image: Callable, client: FlaskClient
) -> None:
    source = generate_fundus(1, 11, 200)
    sixteen_bit = Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257)
    assert sixteen_bit.mode == "I;16"
    with_alpha = source.convert("RGBA")
    with_alpha.putalpha(Image.new("L", source.size, 200))
    files = [
        (_encode(source.convert("L"), "PNG"), "grayscale.png"),
        (_encode(source.convert("CMYK"), "JPEG"), "cmyk.jpg"),
        (_encode(sixteen_bit, "PNG"), "sixteen-bit.png"),
        (_encode(sixteen_bit, "TIFF"), "sixteen-bit.tif"),
        (_encode(source.convert("P"), "PNG"), "palette.png"),
        (_encode(source.convert("P"), "GIF"), "palette.gif"),
        (_encode(with_alpha, "PNG"), "alpha.png"),
    ]
    grey = {"grayscale.png", "sixteen-bit.png", "sixteen-bit.tif"}
    for row in submit_and_grade(files):
        assert row["error"] is None
        if row["filename"] in grey:  # decoded, but a colour model cannot grade grey pictures
            assert (row["state"], row["ungradable_reasons"]) == ("ungradable", ["not_fundus"])
        else:
            assert row["state"] == "graded", row
            assert 0 <= row["grade"] <= 4
    grades_a_good_image(client)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("GIF", {"duration": 100, "loop": 0}),
        ("TIFF", {}),
        ("PNG", {"duration": 100}),  # APNG
        ("WEBP", {"lossless": True}),
        ("MPO", {}),
    ],
)
def test_multi_frame_images_are_graded_on_their_first_frame(
    submit_and_grade: Callable,
    grades_a_good_image: Callable,
    client: FlaskClient,
    settings: Settings,
    fmt: str,
    options: dict[str, Any],
) -> None:
    # 200 px keeps the three uploads under the test client's 500 kB in-memory spool.
    first, second = generate_fundus(0, 21, 200), generate_fundus(4, 22, 200)
    animated = _encode(first, fmt, save_all=True, append_images=[second], **options)
    assert Image.open(io.BytesIO(animated)).n_frames == 2
    first_only = _encode(first, fmt, **options)
    second_only = _encode(second, fmt, **options)

    limit = settings.max_image_pixels
    decoded = np.asarray(decode_image(animated, max_pixels=limit), dtype=np.int16)
    assert np.abs(decoded - np.asarray(decode_image(first_only, max_pixels=limit))).max() <= 2
    assert np.abs(decoded - np.asarray(decode_image(second_only, max_pixels=limit))).mean() > 5

    ext = fmt.lower()
    rows = submit_and_grade(
        [
            (animated, f"animated.{ext}"),
            (first_only, f"first.{ext}"),
            (second_only, f"second.{ext}"),
        ]
    )
    assert [r["state"] for r in rows] == ["graded", "graded", "graded"]
    graded_animation, graded_first, graded_second = rows
    assert graded_animation["probabilities"] == pytest.approx(
        graded_first["probabilities"], abs=0.02
    )
    assert graded_animation["grade"] == graded_first["grade"] != graded_second["grade"]
    grades_a_good_image(client)


def test_exif_rotated_jpeg_is_turned_upright_before_grading(
    submit_and_grade: Callable,
    grades_a_good_image: Callable,
    client: FlaskClient,
    settings: Settings,
) -> None:
    upright = Image.new("RGB", (150, 200))  # portrait, as the camera's viewer shows it
    upright.paste(generate_fundus(2, 31, 150), (0, 25))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # landscape pixels on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (200, 150)

    decoded = decode_image(data, max_pixels=settings.max_image_pixels)
    assert decoded.size == (150, 200)
    difference = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(upright, dtype=np.int16))
    assert difference.mean() < 3, "decoded pixels are the upright photograph"

    (row,) = submit_and_grade([(data, "rotated.jpg")])
    assert row["state"] == "graded"
    assert 0 <= row["grade"] <= 4
    grades_a_good_image(client)


# --- refused by the API ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "images"),
    [
        ("max_request_bytes", [(256, 0), (256, 1)]),  # the request as a whole
        ("max_image_bytes", [(128, 2), (512, 3)]),  # one file among several
    ],
    ids=["request", "one-file"],
)
def test_request_over_the_size_limit_is_413_and_leaves_no_file(
    make_app: Callable[..., Flask],
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
    limit: str,
    images: list[tuple[int, int]],
) -> None:
    app = make_app(**{limit: 16_384})
    client = app.test_client()
    parts = [
        (io.BytesIO(fundus_jpeg(seed=seed, size=size)), f"{seed}.jpg") for size, seed in images
    ]
    response = client.post("/v1/batches", headers=auth, data={"images": parts})
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"
    assert _stored_files(app.extensions["retinaq"].store.root) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ImageRow)) == 0
    grades_a_good_image(client)


def test_more_files_than_the_per_request_limit_is_413(
    make_app: Callable[..., Flask],
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    app = make_app(max_files_per_request=3)
    client = app.test_client()
    parts = [(io.BytesIO(fundus_jpeg(seed=i, size=64)), f"{i}.jpg") for i in range(4)]
    response = client.post("/v1/batches", headers=auth, data={"images": parts})
    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "too_many_files"
    assert "limit is 3" in error["message"]
    assert _stored_files(app.extensions["retinaq"].store.root) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
    grades_a_good_image(client)


def test_hostile_filenames_are_kept_as_escaped_display_names_only(
    client: FlaskClient,
    auth: dict[str, str],
    settings: Settings,
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    # Raw header bytes, quoted-string escapes included, as curl and browsers send them.
    sent_and_kept = [
        (b"../../etc/passwd", "etc/passwd"),
        (b"/abs/path/eye.jpg", "abs/path/eye.jpg"),
        (b"..\\\\..\\\\windows\\\\right.jpg", "windows/right.jpg"),
        (b"nul\x00byte.jpg", "nulbyte.jpg"),
        (b"x" * 300 + b".jpg", "x" * 255),
        ('Ünïcødé \\"quoted\\" <b>.jpg'.encode(), 'Ünïcødé "quoted" <b>.jpg'),
    ]
    boundary = b"retinaq-test-boundary"
    body = b"".join(
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="images"; filename="' + sent + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + fundus_jpeg(seed=i) + b"\r\n"
        for i, (sent, _) in enumerate(sent_and_kept)
    )
    created = client.post(
        "/v1/batches",
        headers=auth,
        data=body + b"--" + boundary + b"--\r\n",
        content_type=f"multipart/form-data; boundary={boundary.decode()}",
    )
    assert created.status_code == 202, created.get_json()

    listing = client.get(created.get_json()["links"]["images"], headers=auth)
    items = listing.get_json()["items"]
    assert [i["filename"] for i in items] == [kept for _, kept in sent_and_kept]
    raw = listing.get_data()
    assert b'\\"quoted\\" <b>.jpg' in raw
    assert b"\\u00dcn\\u00efc\\u00f8d\\u00e9" in raw
    assert b"\x00" not in raw
    assert json.loads(raw)["items"] == items

    for kept in ("passwd", "eye.jpg", "right.jpg"):
        assert not list(settings.var_dir.rglob(kept)), "no file is ever named by the client"
    for path in _stored_files(settings.image_store):
        assert path.name in {i["sha256"] for i in items}
        assert path.parent.parent.parent == settings.image_store
    grades_a_good_image(client)


def test_malformed_metadata_csv_is_422_naming_the_line(
    client: FlaskClient,
    auth: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    csv_text = "filename,patient_id,laterality\na.jpg,P1,L\nb.jpg,P2,R,extra\n"
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={
            "images": [(io.BytesIO(fundus_jpeg(seed=i)), n) for i, n in enumerate("ab")],
            "metadata": (io.BytesIO(csv_text.encode()), "metadata.csv"),
        },
    )
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "invalid_metadata"
    assert error["message"].startswith("line 3:")
    assert _stored_files(settings.image_store) == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
    grades_a_good_image(client)


def test_unknown_fields_in_the_json_body_are_422(
    client: FlaskClient, auth: dict[str, str], grades_a_good_image: Callable
) -> None:
    response = client.post(
        "/v1/batches", headers=auth, json={"open": True, "colour": "blue", "priority": 1}
    )
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "unknown_fields"
    assert "colour" in error["message"] and "priority" in error["message"]
    assert client.get("/v1/batches", headers=auth).get_json()["items"] == []
    grades_a_good_image(client)


def test_wrong_content_type_is_415(
    client: FlaskClient, auth: dict[str, str], grades_a_good_image: Callable
) -> None:
    response = client.post(
        "/v1/batches", headers=auth, data=b"\xff\xd8\xff raw jpeg", content_type="image/jpeg"
    )
    assert response.status_code == 415
    assert _error(response)["code"] == "unsupported_media_type"
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    response = client.post(batch["links"]["add_images"], headers=auth, json={"images": []})
    assert response.status_code == 415
    assert _error(response)["code"] == "unsupported_media_type"
    grades_a_good_image(client)


def test_invalid_pagination_cursor_is_400(
    client: FlaskClient,
    auth: dict[str, str],
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    batch = client.post(
        "/v1/batches", headers=auth, data={"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")]}
    ).get_json()
    for url in ("/v1/batches", batch["links"]["results"], batch["links"]["images"]):
        for cursor in ("not-a-cursor!!", "AAAA", "Zm9v"):
            response = client.get(f"{url}?cursor={cursor}", headers=auth)
            assert response.status_code == 400, (url, cursor)
            assert _error(response)["code"] == "invalid_cursor"
    grades_a_good_image(client)


def test_unknown_and_foreign_ids_get_the_same_404(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    auth: dict[str, str],
    grades_a_good_image: Callable,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    other = make_programme("Elsewhere")
    theirs = client.post(
        "/v1/batches", headers=other, data={"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")]}
    ).get_json()
    (their_image,) = client.get(theirs["links"]["results"], headers=other).get_json()["items"]
    missing = str(uuid.uuid4())
    requests = [
        ("get", "/v1/batches/{b}"),
        ("get", "/v1/batches/{b}/results"),
        ("get", "/v1/batches/{b}/images"),
        ("get", "/v1/images/{i}"),
        ("post", "/v1/batches/{b}/close"),
        ("delete", "/v1/batches/{b}"),
        ("delete", "/v1/batches/{b}?purge=true"),
    ]
    for method, template in requests:
        foreign = getattr(client, method)(
            template.format(b=theirs["id"], i=their_image["image_id"]), headers=auth
        )
        unknown = getattr(client, method)(template.format(b=missing, i=missing), headers=auth)
        assert foreign.status_code == unknown.status_code == 404, template
        assert foreign.get_json() == unknown.get_json(), template
        assert _error(foreign)["code"] == "not_found"
    untouched = client.get(theirs["links"]["self"], headers=other).get_json()
    assert untouched["state"] == "queued"
    assert untouched["counts"]["queued"] == 1
    grades_a_good_image(client)
