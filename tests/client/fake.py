"""A scripted rnnlab server for client and CLI tests without a real one: httpx's MockTransport with a
route per (method, path), a fake clock for the client's sleeps, and the CLI run in-process."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import typer

from rnnlab import Client

URL = "http://rnnlab.test"
Route = Callable[[httpx.Request], httpx.Response]


def sse(event_id: str, event: str, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Stream(httpx.SyncByteStream):
    """Sends ``chunks``, then breaks the connection (``drop``) or ends the stream."""

    def __init__(self, chunks: list[bytes], drop: bool = False) -> None:
        self.chunks, self.drop = chunks, drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection reset by peer")


def events_response(chunks: list[bytes], drop: bool = False) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Stream(chunks, drop))


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def error(status: int, code: str, message: str, details: Any = None, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(status, json=body, headers=headers)


@dataclass
class FakeServer:
    """``routes[(method, path)]``: a response, or a function of the request; ``down``: every request
    is refused (the API restarting). ``requests`` lists what was asked; ``clock`` moves with sleeps."""

    routes: dict[tuple[str, str], httpx.Response | Route] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    down: bool = False
    clock: list[float] = field(default_factory=lambda: [0.0])
    sleeps: list[float] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            return refused(request)
        path = request.url.path.removeprefix("/api/v1")
        route = self.routes.get((request.method, path))
        if route is None:
            return error(404, "not_found", f"no route {request.method} {path}")
        return route(request) if callable(route) else route

    def client(self, api_key: str | None = "rnl_test") -> Client:
        http = httpx.Client(base_url=URL, transport=httpx.MockTransport(self.handle))
        return Client(URL, api_key, http=http)

    def patch_time(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The client's sleeps take no time but move the clock its deadlines and windows read."""

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.clock[0] += seconds

        monkeypatch.setattr("rnnlab.client.time.sleep", sleep)
        monkeypatch.setattr("rnnlab.client.time.monotonic", lambda: self.clock[0])

    def asked(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == f"/api/v1{path}"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: FakeServer, *args: str
) -> Result:
    """``rnnlab ARGS`` in this process, against ``server``; stdout and stderr are not terminals."""
    from rnnlab import cli

    def client(url: str | None, key: str | None) -> Client:
        http = httpx.Client(base_url=URL, transport=httpx.MockTransport(server.handle))
        return Client(URL, key, http=http)

    monkeypatch.setattr(cli, "Client", client)
    for name in ("RNNLAB_URL", "RNNLAB_API_KEY", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "argv", ["rnnlab", *args])
    app = typer.Typer(no_args_is_help=True)
    cli.register(app)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.run(app)
    captured = capsys.readouterr()
    code = exited.value.code
    return Result(code if isinstance(code, int) else 0, captured.out, captured.err)
