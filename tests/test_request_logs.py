"""Following one upload through the logs, as an operator would, on real processes.

gunicorn's API, a Celery worker and the reconciler run on PostgreSQL and Redis with JSON
logs. Two uploads are sent with ids of the client's choosing (``X-Request-ID``), with patient
ids and hostile filenames. Then every line of every log must be a JSON object, the API's
lines for each upload and the worker's lines about its images must carry its id, and no
line may hold a patient id, a filename, an image's SHA-256 or its storage key.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.filenames import relative_path
from tests.log_lines import forms, json_lines
from tests.support import REPO_ROOT, free_port, running_stack, wait_batch_finished

pytestmark = pytest.mark.slow

# Names a client may send: quotes and braces that would forge JSON fields, a path, a line
# break, a terminal escape and non-ASCII. The API keeps a printable form of each.
HOSTILE_NAMES = [
    'x", "level": "CRITICAL", "y": "{tag}.jpg',
    "..\\..\\etc\\passwd-{tag}.jpg",
    "line\nbreak-{tag}\x1b[31m.jpg",
    "ünïcødé-{tag}.jpg",
    "plain-{tag}.jpg",
]


def _upload(
    tag: str, count: int, jpeg: Callable[..., bytes], seed: int
) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """Files named from :data:`HOSTILE_NAMES`, a metadata CSV with a patient for each, and
    every value that must stay out of the logs (names, patient ids, hashes, storage keys)."""
    names = [HOSTILE_NAMES[i % len(HOSTILE_NAMES)].format(tag=f"{tag}{i}") for i in range(count)]
    patients = [f"MRN-{tag}-{i:04d}" for i in range(count)]
    images = [jpeg(grade=i % 5, seed=seed + i, size=128) for i in range(count)]
    # The CSV names the files as the API will store them (printable, '/'-separated); a name
    # with control characters reaches the API in a client's own encoding, so it has no row.
    stored = [relative_path(name) for name in names]
    csv = "filename,patient_id,laterality\n" + "".join(
        f'"{s.replace(chr(34), chr(34) * 2)}",{p},{"LR"[i % 2]}\n'
        for i, (s, p, name) in enumerate(zip(stored, patients, names, strict=True))
        if name.isprintable()
    )
    files: list[tuple[str, Any]] = [
        ("images", (name, data, "image/jpeg")) for name, data in zip(names, images, strict=True)
    ]
    files.append(("metadata", ("metadata.csv", csv.encode(), "text/csv")))
    hidden: dict[str, str] = {}
    for i, data in enumerate(images):
        sha = hashlib.sha256(data).hexdigest()
        hidden |= {
            f"filename {i}": names[i],
            f"stored filename {i}": stored[i],
            f"patient {i}": patients[i],
            f"sha256 {i}": sha,
            f"storage key {i}": f"{sha[:2]}/{sha[2:4]}/{sha}",
        }
    return files, hidden


def test_one_upload_is_followed_by_its_request_id_through_json_logs_that_name_no_patient(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(tmp_path),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_DIR": str(tmp_path / "images"),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": "4",
        "RETINAQ_TASK_SIZE": "4",
        "RETINAQ_STATUS_RETRY_AFTER_S": "1",
        "RETINAQ_SECRET_KEY": "request-logs-secret-key-for-cursors",
        "RETINAQ_LOG_FORMAT": "json",
        "RETINAQ_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "cli"]
    commands = {
        "api": ([*cli, "api", "--port", str(port), "--workers", "2"], REPO_ROOT),
        "worker": ([*cli, "worker", "--hostname", f"logs-{port}@%h"], REPO_ROOT),
        "reconciler": ([*cli, "reconcile", "--interval", "1"], REPO_ROOT),
    }
    tag = uuid.uuid4().hex[:6].upper()
    first = f"trace-{uuid.uuid4().hex}"
    second = f"trace-{uuid.uuid4().hex}"
    files_1, hidden_1 = _upload(f"A{tag}", 10, fundus_jpeg, 700)
    files_2, hidden_2 = _upload(f"B{tag}", 3, fundus_jpeg, 800)
    hidden = hidden_1 | {f"second {k}": v for k, v in hidden_2.items()}
    headers = make_programme("Request logs")
    sent: dict[str, list[str]] = {}
    with (
        running_stack(commands, env, tmp_path, f"{base_url}/readyz"),
        httpx.Client(base_url=base_url, headers=headers, timeout=60) as http,
    ):
        for request_id, files in ((first, files_1), (second, files_2)):
            created = http.post("/v1/batches", files=files, headers={"X-Request-ID": request_id})
            assert created.status_code == 202, created.text
            assert created.headers["X-Request-ID"] == request_id
            status = wait_batch_finished(http, created.headers["Location"])
            images = http.get(status["links"]["images"], params={"limit": 50}).json()["items"]
            sent[request_id] = [image["id"] for image in images]
            assert len(sent[request_id]) == len(files) - 1
            for image in images:  # the names as stored, whatever the API made of them
                hidden[f"listed {image['id']}"] = image["filename"]

    api, worker, reconciler = (json_lines(tmp_path / f"{n}.log") for n in commands)

    # The API: the access line and the enqueue line of each upload carry its id.
    for request_id, ids in sent.items():
        mine = [r for r in api if r.get("request_id") == request_id]
        [access] = [r for r in mine if r["logger"] == "gunicorn.access"]
        assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/batches", 202)
        [enqueued] = [r for r in mine if r["logger"] == "api.submission"]
        assert enqueued["images"] == len(ids)
        assert enqueued["tasks"] == -(-len(ids) // 4)

    # The worker: each micro-batch names the requests its images came from, and every image
    # of an upload was graded in a micro-batch naming that upload's id.
    batches = [r for r in worker if "image_ids" in r]
    assert batches, "no micro-batch line in the worker's log"
    for request_id, ids in sent.items():
        naming = [b for b in batches if request_id in b["request_ids"]]
        assert set(ids) <= {i for b in naming for i in b["image_ids"]}, request_id
        assert all(b["task_id"] for b in naming)
        # The tasks this upload sent say so on their summary line.
        done = [r for r in worker if r["message"].startswith("task done")]
        assert sum(r["claimed"] for r in done if r.get("request_id") == request_id) >= 1
    assert sum(b["graded"] + b["ungradable"] + b["failed"] for b in batches) == sum(
        len(ids) for ids in sent.values()
    )
    assert {r["level"] for r in worker} <= {"DEBUG", "INFO", "WARNING"}, "an error in the worker"
    assert reconciler and any("a pass every" in r["message"] for r in reconciler)

    # No line of any process names a patient, a file or stored bytes.
    logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace") for n in commands}
    leaks = [
        f"{what} ({form!r}) in {name}.log"
        for what, value in hidden.items()
        for form in forms(value)
        for name, text in logs.items()
        if form in text
    ]
    assert not leaks, "\n".join(leaks)
