"""An upload whose body stops arriving is a 408 after RNNLAB_BODY_READ_TIMEOUT_SECONDS, leaving nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.main import create_app
from tests.datasets.conftest import UPLOAD_URL, assert_nothing_left, set_setting


async def post_then_stall(app: Any, headers: dict[str, str], first: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``first`` as part of a longer body, then nothing more (the connection stays open)."""
    sent = False
    status = 0
    body = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await asyncio.sleep(3600)  # a client that announced more and never sends it
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": UPLOAD_URL,
        "raw_path": UPLOAD_URL.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 30)
    return status, json.loads(bytes(body))


def test_a_stalled_upload_is_a_408_and_leaves_nothing(env, auth, monkeypatch) -> None:
    set_setting(monkeypatch, body_read_timeout_seconds="0.5")
    first = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="slow.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\n" + b"a,b\n" + b"1,2\n" * 10_000
    )
    headers = {
        **auth,
        "content-type": "multipart/form-data; boundary=b0undary",
        "content-length": str(len(first) + 1_000_000),
    }
    status, body = asyncio.run(post_then_stall(create_app(), headers, first))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert_nothing_left()
