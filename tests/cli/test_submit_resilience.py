"""``retinaq submit`` when things go wrong: quotas, lost answers, an API that is not there,
a run that stops half way and is resumed.

The test app (PostgreSQL, the real image store) is served over real HTTP by Werkzeug,
behind a small WSGI layer that records every POST (its path and ``Idempotency-Key``) and
can play a proxy that loses the API's answer after the API did the work. Quotas are set
with ``retinaq admin set-quota`` as an operator would.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from cli.journal import JOURNAL_NAME
from cli.main import cli
from common.db.tables import Batch, Image
from tests.support import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

LOST = b'{"error": {"code": "bad_gateway", "message": "the upstream connection was lost"}}'


class Gateway:
    """WSGI in front of the app: records POSTs, and loses the answers it is told to."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.posts: list[tuple[str, str | None]] = []
        self.lose_image_posts: set[int] = set()  # 1-based numbers of POST .../images

    def image_posts(self) -> list[tuple[str, str | None]]:
        return [post for post in self.posts if post[0].endswith("/images")]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] == "POST":
            self.posts.append((environ["PATH_INFO"], environ.get("HTTP_IDEMPOTENCY_KEY")))
            if environ["PATH_INFO"].endswith("/images"):
                if len(self.image_posts()) in self.lose_image_posts:
                    answer = self.app(environ, lambda *_a, **_k: lambda _b: None)
                    try:
                        b"".join(answer)  # the API does the work and commits...
                    finally:
                        getattr(answer, "close", lambda: None)()
                    start_response("502 Bad Gateway", [("Content-Type", "application/json")])
                    return [LOST]  # ...and its answer never reaches the client
        return self.app(environ, start_response)


@pytest.fixture
def gateway(make_app: Callable[..., Flask]) -> Iterator[tuple[str, Gateway]]:
    """The test application behind a :class:`Gateway`, served on a free loopback port."""
    front = Gateway(make_app(status_retry_after_s=1))
    server = make_server("127.0.0.1", 0, front, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}", front
    server.shutdown()
    thread.join()
    server.server_close()


def _key(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


def _tree(root: Path, jpeg: Callable[..., bytes], names: Iterable[str]) -> Path:
    for seed, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(seed=700 + seed))
    return root


def _submit(*argv: str) -> Result:
    return CliRunner().invoke(cli, ["submit", *argv])


def _set_quota(database_url: str, *options: str) -> None:
    """``retinaq admin set-quota North ...``, run as an operator runs it."""
    completed = subprocess.run(
        [sys.executable, "-m", "cli", "admin", "set-quota", "North", *options],
        env={**os.environ, "RETINAQ_DATABASE_URL": database_url},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def _batch_images(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
        return sorted(session.scalars(select(Image.filename)))


NAMES = [f"site{s}/P{p:03d}/visit1/{eye}.jpg" for s in (1, 2) for p in (1, 2) for eye in "LR"]


def test_nested_folders_go_by_relative_path_with_a_key_per_request_and_the_batch_first(
    gateway: tuple[str, Gateway],
    auth: dict[str, str],
    client: FlaskClient,
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    api_url, front = gateway
    tree = _tree(tmp_path / "screening", fundus_jpeg, NAMES)
    metadata = tmp_path / "metadata.csv"
    metadata.write_text(
        "filename,patient_id,laterality\n"
        + "".join(f"{name},{name.split('/')[1]},{name[-5]}\n" for name in NAMES)
    )
    result = _submit(
        str(tree), "--metadata", str(metadata), "--chunk-size", "3", "--api-url", api_url,
        "--api-key", _key(auth),
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    status_url = result.stdout.strip()
    assert status_url.startswith(f"{api_url}/v1/batches/"), "only the batch URL goes to stdout"
    batch = client.get(status_url, headers=auth).get_json()
    assert batch["state"] != "open" and batch["image_count"] == len(NAMES)
    items = client.get(batch["links"]["images"], headers=auth).get_json()["items"]
    assert {i["filename"]: (i["patient_id"], i["laterality"]) for i in items} == {
        name: (name.split("/")[1], name[-5]) for name in NAMES
    }
    paths = [path.rsplit("/", 1)[1] if path.count("/") > 2 else "" for path, _ in front.posts]
    assert paths == ["", "images", "images", "images", "close"], "create, 3 chunks, close"
    keys = [key for _, key in front.posts]
    assert None not in keys and len(set(keys)) == len(keys), "a key of its own per request"
    assert not (tree / JOURNAL_NAME).exists(), "the journal goes once the batch is closed"


def test_a_lost_answer_is_not_sent_again(
    gateway: tuple[str, Gateway],
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    api_url, front = gateway
    front.lose_image_posts = {2}
    tree = _tree(tmp_path / "batch", fundus_jpeg, [f"eye{i}.jpg" for i in range(6)])
    result = _submit(
        str(tree), "--chunk-size", "2", "--max-wait", "0.2", "--api-url", api_url,
        "--api-key", _key(auth),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "502 bad_gateway" in result.output, "the retry was announced"
    assert _batch_images(sessions) == [f"eye{i}.jpg" for i in range(6)], "each image once"
    assert len(front.image_posts()) == 3, "the chunk the API held was not sent again"


def test_a_rate_limit_is_waited_out(
    gateway: tuple[str, Gateway],
    auth: dict[str, str],
    database_url: str,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    api_url, front = gateway
    _set_quota(database_url, "--max-per-minute", "4")
    tree = _tree(tmp_path / "batch", fundus_jpeg, [f"eye{i}.jpg" for i in range(8)])
    result = _submit(
        str(tree), "--chunk-size", "4", "--api-url", api_url,
        "--api-key", _key(auth),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "429 rate_limited" in result.output
    assert _batch_images(sessions) == [f"eye{i}.jpg" for i in range(8)]
    keys = [key for _, key in front.image_posts()]
    assert len(keys) == 3 and keys[1] == keys[2], "one wait as long as Retry-After, same key"


def test_a_stopped_run_is_reported_and_resume_sends_only_what_the_batch_lacks(
    gateway: tuple[str, Gateway],
    auth: dict[str, str],
    database_url: str,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    api_url, front = gateway
    names = [f"P{i:03d}/left.jpg" for i in range(10)]
    tree = _tree(tmp_path / "screening", fundus_jpeg, names)
    _set_quota(database_url, "--max-per-minute", "4")
    key = ["--api-key", _key(auth)]
    first = _submit(str(tree), "--chunk-size", "2", "--attempts", "1", "--api-url", api_url, *key)
    assert first.exit_code == 1
    assert "Traceback" not in first.output
    batch_id = first.stdout.strip().rsplit("/", 1)[1]
    assert f"batch {batch_id} is still open and holds 4 of the 10 files" in first.output
    command = first.output.split("to send the rest and close it, run: ", 1)[1].strip()
    assert command == shlex.join(["retinaq", "submit", str(tree), "--api-url", api_url, "--resume"])

    again = _submit(str(tree), "--api-url", api_url, *key)
    assert again.exit_code == 1
    assert f"records an unfinished submission to batch {batch_id}: add --resume" in again.output

    # As if the run had died after the API took the second chunk but before the journal knew.
    journal_file = tree / JOURNAL_NAME
    journal = json.loads(journal_file.read_text())
    assert [c["acknowledged"] for c in journal["chunks"][:3]] == [True, True, False]
    journal["chunks"][1]["acknowledged"] = False
    journal_file.write_text(json.dumps(journal))
    unsent_key = journal["chunks"][2]["key"]

    _set_quota(database_url, "--max-per-minute", "default")
    before = len(front.image_posts())
    resumed = CliRunner().invoke(cli, [*shlex.split(command)[1:], *key])
    assert resumed.exit_code == 0, resumed.output
    assert f"batch {batch_id} already holds 4 of these files" in resumed.output
    sent = front.image_posts()[before:]
    assert len(sent) == 3, "six files left, two a chunk: nothing held was sent again"
    assert sent[0][1] == unsent_key, "the chunk planned before keeps its key"
    assert _batch_images(sessions) == sorted(names)
    assert not journal_file.exists()


def test_an_unreachable_api_is_one_line_and_leaves_no_journal(
    fundus_jpeg: Callable[..., bytes], tmp_path: Path
) -> None:
    tree = _tree(tmp_path / "batch", fundus_jpeg, ["eye.jpg"])
    url = f"http://127.0.0.1:{free_port()}"
    result = _submit(
        str(tree), "--attempts", "2", "--max-wait", "0.1", "--api-url", url, "--api-key", "rq_x"
    )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: api_unreachable: the API is unreachable (")
    assert last.endswith(f"at {url} (gave up after 2 tries)")
    assert "Traceback" not in result.output
    assert not (tree / JOURNAL_NAME).exists(), "nothing was sent: the next run starts afresh"


def test_a_refused_key_and_a_journal_for_another_api_are_one_line(
    gateway: tuple[str, Gateway],
    auth: dict[str, str],
    database_url: str,
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    api_url, _ = gateway
    tree = _tree(tmp_path / "batch", fundus_jpeg, ["a.jpg", "b.jpg"])
    refused = _submit(str(tree), "--api-url", api_url, "--api-key", "rq_not-a-key")
    assert refused.exit_code == 1
    assert refused.output.strip() == (
        "Error: 401 invalid_api_key: the API key is unknown, revoked or expired"
    )

    _set_quota(database_url, "--max-per-minute", "1")
    key = ["--api-key", _key(auth)]
    stopped = _submit(str(tree), "--chunk-size", "1", "--attempts", "1", "--api-url", api_url, *key)
    assert stopped.exit_code == 1 and (tree / JOURNAL_NAME).exists()
    elsewhere = api_url.replace("127.0.0.1", "localhost")
    wrong = _submit(str(tree), "--resume", "--api-url", elsewhere, *key)
    assert wrong.exit_code == 1
    assert wrong.output.strip() == (
        f"Error: {tree / JOURNAL_NAME} belongs to the API at {api_url}, not {elsewhere}: "
        "resume with that --api-url"
    )
