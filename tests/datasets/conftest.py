"""Helpers for the dataset tests: uploads, storage inspection, and a streaming ASGI driver."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from app.config import get_settings

UPLOAD_URL = "/api/v1/datasets"


def upload(
    client: Any,
    headers: dict[str, str],
    filename: str,
    content: bytes,
    name: str | None = None,
) -> Any:
    data = {"name": name} if name is not None else None
    return client.post(UPLOAD_URL, headers=headers, files={"file": (filename, content)}, data=data)


def storage_files() -> list[Path]:
    """Every file under storage (blobs and temporaries)."""
    root = get_settings().storage_root
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def dataset_rows() -> int:
    from app.db import new_session
    from app.models import Dataset

    with new_session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Dataset)) or 0)


def assert_nothing_left() -> None:
    """No blob, no temporary file and no dataset row remain after a refused upload."""
    assert storage_files() == []
    assert dataset_rows() == 0


def assert_error(response: Any, status: int, code: str, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    return dict(error)


def set_setting(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Change RNNLAB_* settings for the running app (settings are read per request)."""
    for key, value in values.items():
        monkeypatch.setenv(f"RNNLAB_{key.upper()}", value)
    get_settings.cache_clear()


def csv_bytes(lines: Iterable[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def npz_bytes(compressed: bool = False, **arrays: Any) -> bytes:
    sink = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(sink, **arrays)
    return sink.getvalue()


def insert_job(dataset_id: str, status: str) -> str:
    """A job row using the dataset, written directly (the jobs domain is not needed)."""
    from app.db import new_session
    from app.models import Dataset, Job

    with new_session() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        job = Job(
            project_id=dataset.project_id,
            dataset_id=dataset_id,
            status=status,
            spec={},
            task="forecast",
            cell="lstm",
        )
        session.add(job)
        session.commit()
        return job.id


def delete_jobs() -> None:
    from app.db import new_session
    from app.models import Job

    with new_session() as session:
        session.execute(sa.delete(Job))
        session.commit()


# -- a streaming ASGI driver ------------------------------------------------------------------------
# Starlette's TestClient reads a request body whole before the app sees it, which defeats tests of
# streaming; this driver feeds the app one chunk at a time and counts what the app consumed.


def multipart_chunks(
    boundary: bytes, filename: str, source: Path | Iterable[bytes], chunk_bytes: int = 64 * 1024
) -> Iterator[bytes]:
    yield (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    if isinstance(source, Path):
        with source.open("rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk
    else:
        yield from source
    yield b"\r\n--" + boundary + b"--\r\n"


DISCONNECT = b"<disconnect>"  # a chunk that makes the driver report a client disconnect


class AsgiResult:
    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.consumed_bytes = 0

    def json(self) -> Any:
        import json

        return json.loads(bytes(self.body))


async def stream_request(
    app: Any,
    path: str,
    headers: dict[str, str],
    chunks: Iterable[bytes],
    on_chunk: Callable[[], None] | None = None,
) -> AsgiResult:
    """POST ``chunks`` to ``app`` as a streamed body; returns status, body and bytes consumed."""
    result = AsgiResult()
    iterator = iter(chunks)
    finished = False

    async def receive() -> dict[str, Any]:
        nonlocal finished
        if finished:
            return {"type": "http.disconnect"}
        chunk = next(iterator, None)
        if chunk is DISCONNECT:
            finished = True
            return {"type": "http.disconnect"}
        if chunk is None:
            finished = True
            return {"type": "http.request", "body": b"", "more_body": False}
        result.consumed_bytes += len(chunk)
        if on_chunk is not None:
            on_chunk()
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    return result
