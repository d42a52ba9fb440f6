"""Every upload of the malformed corpus: a 4xx in the one error body, and nothing left on disk or in SQL."""

from __future__ import annotations

from typing import Any

from app.errors import ERROR_CODES
from tests.datasets.conftest import UPLOAD_URL, dataset_rows, set_setting, storage_files
from tests.datasets.malformed_corpus import CORPUS_SETTINGS, malformed_uploads

BOUNDARY = "corpus-boundary-7d1f"


def raw_upload(client: Any, headers: dict[str, str], filename: str, content: bytes, name: str | None) -> Any:
    """The multipart body written by hand, so file names and fields reach the server byte for byte
    (httpx would percent-encode control characters in a filename)."""
    parts = []
    if name is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\n'.encode() + name.encode())
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content)
    body = b"\r\n".join(parts) + f"\r\n--{BOUNDARY}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return client.post(UPLOAD_URL, headers={**headers, "content-type": content_type}, content=body)


def test_the_corpus_is_large_and_its_labels_unique() -> None:
    cases = malformed_uploads()
    assert len(cases) >= 80
    assert len({c.label for c in cases}) == len(cases)


def test_every_malformed_upload_is_a_4xx_and_leaves_nothing(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, **CORPUS_SETTINGS)
    problems: list[str] = []
    codes: dict[str, int] = {}
    for case in malformed_uploads():
        response = raw_upload(client, auth, case.filename, case.content, case.name)
        body = response.json() if response.headers.get("content-type") == "application/json" else None
        error = body.get("error") if isinstance(body, dict) else None
        if not 400 <= response.status_code < 500:
            problems.append(f"{case.label}: status {response.status_code} {response.text[:200]}")
        elif not (isinstance(error, dict) and {"code", "message", "details"} <= set(error)):
            problems.append(f"{case.label}: not the error body: {response.text[:200]}")
        elif ERROR_CODES.get(error["code"], (0,))[0] != response.status_code:
            problems.append(f"{case.label}: code {error['code']} is not a listed {response.status_code}")
        else:
            codes[error["code"]] = codes.get(error["code"], 0) + 1
        if storage_files() or dataset_rows():
            problems.append(f"{case.label}: left {storage_files()} and {dataset_rows()} rows")
            break  # what it left would be blamed on every later case
    assert problems == []
    # The corpus exercises the new refusals, not one catch-all.
    assert {"nul_character", "too_many_columns", "compression_ratio", "invalid_npz", "invalid_filename"} <= set(codes)
    assert {"invalid_characters", "invalid_name", "unparseable_csv", "invalid_parquet"} <= set(codes)
