"""Server processes a command starts for itself (``retinaq demo``, ``retinaq bench``).

Shared here so neither command reaches into the other's helpers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rich.console import Console

console = Console()


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def child_process(name: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[Any]:
    """Run a server as a child, stopping it gracefully (SIGTERM, then SIGKILL) on exit."""
    handle: IO[bytes] = log.open("wb")
    process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        handle.close()
        console.print(f"[dim]{name} stopped (log: {log})[/dim]")
