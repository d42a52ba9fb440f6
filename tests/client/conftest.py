"""The embedded stack served over real HTTP (uvicorn on a free port), for the client and the CLI."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.stack import Stack


@dataclass
class Served:
    stack: Stack
    url: str
    api_key: str

    @property
    def env(self) -> dict[str, str]:
        return {"RNNLAB_URL": self.url, "RNNLAB_API_KEY": self.api_key}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(embedded_stack: Stack) -> Iterator[Served]:
    """SQLite + the embedded broker + one real worker process + the API on a real port."""
    import uvicorn

    from app.main import create_app

    embedded_stack.start_worker(queues="default,gpu")  # a cuda job fails clearly on a CPU-only machine
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    key = embedded_stack.headers["Authorization"].removeprefix("Bearer ")
    try:
        yield Served(embedded_stack, f"http://127.0.0.1:{port}", key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
