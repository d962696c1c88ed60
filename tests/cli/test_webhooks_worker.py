"""``retinaq worker --serve webhooks``: the delivery app on the webhooks queue, threads, no
model (so no ``worker`` extra)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from common.settings import Settings


@pytest.mark.parametrize(
    ("extra", "pool"),
    [((), ["--pool=threads", "--concurrency=8"]), (("--pool=prefork",), ["--pool=prefork"])],
)
def test_the_webhooks_worker_runs_the_delivery_app_on_its_queue(
    monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...], pool: list[str]
) -> None:
    from cli import servers

    def no_extra(name: str) -> None:
        raise AssertionError(f"the webhooks worker needs no {name} extra")

    started: list[list[str]] = []
    monkeypatch.setattr(servers, "require_extra", no_extra)
    monkeypatch.setattr(servers, "require_schema_at_head", lambda: None)
    monkeypatch.setattr(servers, "_exec", started.append)
    monkeypatch.setattr(servers, "get_settings", lambda: Settings(log_format="text"))
    result = CliRunner().invoke(cli, ["worker", "--serve", "webhooks", *extra])
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert argv[:3] == ["celery", "-A", "worker.webhooks.app"]
    assert argv[argv.index("--queues") + 1] == "retinaq.webhooks"
    assert [a for a in argv if a.startswith(("--pool", "--concurrency"))] == pool
