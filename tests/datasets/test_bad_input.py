"""Every refused upload: a clear 4xx in the one error body, and nothing left behind (no file, no row)."""

from __future__ import annotations

import asyncio
import gzip
import io
import pickle
import zipfile

import numpy as np
import pyarrow as pa

from app.main import create_app
from tests.datasets.conftest import (
    DISCONNECT,
    UPLOAD_URL,
    assert_error,
    assert_nothing_left,
    csv_bytes,
    multipart_chunks,
    npz_bytes,
    parquet_bytes,
    set_setting,
    stream_request,
    upload,
)


def test_empty_file(client, auth) -> None:
    assert_error(upload(client, auth, "empty.csv", b""), 422, "empty_file", "'empty.csv'", "empty")
    assert_nothing_left()


def test_unknown_extension_is_415_listing_accepted_formats(client, auth) -> None:
    err = assert_error(
        upload(client, auth, "sheet.xlsx", b"PK\x03\x04junk"), 415, "unsupported_format", "sheet.xlsx", ".csv"
    )
    assert err["details"]["accepted"] == [".csv.gz", ".csv", ".parquet", ".npz"]
    assert_nothing_left()


def test_unknown_extension_is_refused_before_the_body_is_read(env, auth) -> None:
    boundary = b"b0undary"
    body = multipart_chunks(boundary, "huge.xlsx", (b"x" * 65536 for _ in range(256)))  # 16 MiB
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    result = asyncio.run(stream_request(create_app(), UPLOAD_URL, headers, body))
    assert result.status == 415 and result.json()["error"]["code"] == "unsupported_format"
    assert result.consumed_bytes < 2 * 1024 * 1024
    assert_nothing_left()


def test_client_disconnect_mid_upload_leaves_nothing(env, auth) -> None:
    boundary = b"b0undary"
    parts = multipart_chunks(boundary, "cut.csv", [b"a,b\n" + b"1,2\n" * 100_000, DISCONNECT])
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    result = asyncio.run(stream_request(create_app(), UPLOAD_URL, headers, parts))
    assert result.status == 400 and result.json()["error"]["code"] == "upload_interrupted"
    assert_nothing_left()


def test_content_that_contradicts_its_extension_is_415(client, auth) -> None:
    renamed_zip = npz_bytes(x=np.arange(3))
    assert_error(upload(client, auth, "data.csv", renamed_zip), 415, "unsupported_format", "npz")
    assert_error(upload(client, auth, "data.parquet", b"a,b\n1,2\n"), 415, "unsupported_format", "parquet")
    assert_error(upload(client, auth, "data.csv.gz", b"a,b\n1,2\n"), 415, "unsupported_format", "csv.gz")
    assert_nothing_left()


def test_over_the_size_limit_is_413(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_upload_bytes="2048")
    err = assert_error(
        upload(client, auth, "big.csv", csv_bytes(["a"] + ["1"] * 2000)), 413, "file_too_large", "2048 bytes"
    )
    assert err["details"] == {"limit_bytes": 2048}
    assert_nothing_left()


def test_over_the_size_limit_stops_reading_the_body_early(env, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_upload_bytes="65536", upload_chunk_bytes="16384")
    boundary = b"b0undary"
    body = multipart_chunks(boundary, "big.csv", (b"1234567\n" * 512 for _ in range(4096)))  # 16 MiB
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    result = asyncio.run(stream_request(create_app(), UPLOAD_URL, headers, body))
    assert result.status == 413 and result.json()["error"]["code"] == "file_too_large"
    assert result.consumed_bytes < 200_000  # refused at the limit, not after the whole 16 MiB
    assert_nothing_left()


def test_content_length_far_over_the_limit_is_refused_before_reading(env, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_upload_bytes="1024")
    headers = {**auth, "content-type": "multipart/form-data; boundary=x", "content-length": str(50 * 1024**2)}
    result = asyncio.run(stream_request(create_app(), UPLOAD_URL, headers, [b"never read"] * 10))
    assert result.status == 413 and result.json()["error"]["code"] == "file_too_large"
    assert result.consumed_bytes == 0
    assert_nothing_left()


def test_csv_gz_decompressing_past_the_limit_is_413(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_upload_bytes=str(100_000))
    bomb = gzip.compress(b"a\n" + b"0\n" * 5_000_000)  # ~10 MB of text in ~10 kB
    assert len(bomb) < 100_000
    assert_error(upload(client, auth, "bomb.csv.gz", bomb), 413, "file_too_large", "decompressed")
    assert_nothing_left()


def test_corrupt_gzip_is_422(client, auth) -> None:
    broken = gzip.compress(csv_bytes(["a,b"] + ["1,2"] * 1000))[:-20]
    assert_error(upload(client, auth, "cut.csv.gz", broken), 422, "invalid_gzip", "cut.csv.gz")
    assert_nothing_left()


def test_ragged_csv_names_the_line(client, auth) -> None:
    content = b'a,b,c\n1,2,3\n4,"five\nand more",6\n7,8\n9,10,11\n'
    err = assert_error(upload(client, auth, "ragged.csv", content), 422, "unparseable_csv", "line 5", "expected 3")
    assert err["details"]["line"] == 5
    assert_nothing_left()


def test_ragged_csv_gz_names_the_line(client, auth) -> None:
    content = gzip.compress(csv_bytes(["a,b"] + ["1,2"] * 100 + ["1,2,3"]))
    assert_error(upload(client, auth, "ragged.csv.gz", content), 422, "unparseable_csv", "line 102")
    assert_nothing_left()


def test_non_utf8_text_names_the_byte_offset_and_line(client, auth) -> None:
    content = "name,city\nAnn,Köln\n".encode() + b"Bob,K\xf6ln\n"  # the last line is Latin-1
    err = assert_error(upload(client, auth, "cities.csv", content), 422, "invalid_encoding", "UTF-8", "line 3")
    assert err["details"] == {"byte_offset": content.index(b"\xf6"), "line": 3}
    assert_nothing_left()


def test_duplicate_column_names_are_named(client, auth) -> None:
    content = csv_bytes(["t,value,value,x,x", "1,2,3,4,5"])
    err = assert_error(upload(client, auth, "dup.csv", content), 422, "duplicate_columns", "'value'", "'x'")
    assert err["details"]["duplicates"] == ["value", "x"]
    assert_nothing_left()


def test_duplicate_column_names_in_parquet(client, auth) -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    assert_error(upload(client, auth, "dup.parquet", parquet_bytes(table)), 422, "duplicate_columns", "'a'")
    assert_nothing_left()


def test_csv_with_a_header_but_no_rows(client, auth) -> None:
    err = assert_error(upload(client, auth, "head.csv", b"a,b,c\n"), 422, "no_rows", "no data rows")
    assert err["details"]["columns"] == ["a", "b", "c"]
    assert_nothing_left()


def test_csv_with_only_blank_lines(client, auth) -> None:
    assert_error(upload(client, auth, "blank.csv", b"\n\n\n"), 422, "empty_file", "blank.csv")
    assert_nothing_left()


def test_corrupt_parquet_is_422(client, auth) -> None:
    content = parquet_bytes(pa.table({"a": list(range(100))}))
    truncated = content[: len(content) // 2]
    assert_error(upload(client, auth, "cut.parquet", truncated), 422, "invalid_parquet", "cut.parquet")
    assert_nothing_left()


def test_npz_with_an_object_array_is_refused_naming_it(client, auth) -> None:
    content = npz_bytes(X=np.zeros((2, 3)), meta=np.array([{"a": 1}, None], dtype=object))
    err = assert_error(upload(client, auth, "obj.npz", content), 422, "object_array", "'meta'", "pickle")
    assert err["details"]["array"] == "meta"
    assert_nothing_left()


def test_npz_with_a_pickle_member_is_refused(client, auth) -> None:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("X.npy", pickle.dumps({"not": "an array"}))
    assert_error(upload(client, auth, "pickled.npz", sink.getvalue()), 422, "invalid_npz", "'X'")

    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("model.pkl", pickle.dumps([1, 2, 3]))
    assert_error(upload(client, auth, "pickled.npz", sink.getvalue()), 422, "invalid_npz", "model.pkl")
    assert_nothing_left()


def test_npz_decompressing_past_the_limit_is_413(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_upload_bytes=str(100_000))
    content = npz_bytes(compressed=True, X=np.zeros(1_000_000))  # 8 MB of zeros in ~8 kB
    assert_error(upload(client, auth, "zeros.npz", content), 413, "file_too_large", "uncompressed")
    assert_nothing_left()


def test_filenames_with_path_parts_are_refused(client, auth) -> None:
    for filename in ("../escape.csv", "dir/data.csv", "dir\\data.csv", "..csv"):
        assert_error(upload(client, auth, filename, b"a\n1\n"), 422, "invalid_filename", "path separators")
    assert_nothing_left()


def test_missing_file_field_names_file(client, auth) -> None:
    r = client.post(UPLOAD_URL, headers=auth, data={"name": "no file"}, files={"other": ("x.csv", b"a\n1\n")})
    err = assert_error(r, 422, "validation_error", "file")
    assert err["details"][0]["field"] == "file"
    assert_nothing_left()


def test_repeated_or_overlong_fields_list_the_field_in_details(client, auth) -> None:
    files = [("file", ("a.csv", b"a\n1\n")), ("file", ("b.csv", b"a\n1\n"))]
    err = assert_error(client.post(UPLOAD_URL, headers=auth, files=files), 422, "validation_error", "file")
    message = err["message"].partition(": ")[2]
    assert err["details"] == [{"field": "file", "message": message, "type": "validation_error"}]
    r = client.post(UPLOAD_URL, headers=auth, data={"name": "x" * 5000}, files={"file": ("a.csv", b"a\n1\n")})
    assert assert_error(r, 422, "validation_error", "name")["details"][0]["field"] == "name"
    assert_nothing_left()


def test_file_part_without_a_filename(client, auth) -> None:
    boundary = "xyz"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"\r\n\r\na\n1\n\r\n--{boundary}--\r\n'
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary}"}
    assert_error(client.post(UPLOAD_URL, headers=headers, content=body), 422, "invalid_filename", "no filename")
    assert_nothing_left()


def test_non_multipart_body_is_415(client, auth) -> None:
    r = client.post(UPLOAD_URL, headers=auth, json={"file": "a,b\n1,2\n"})
    assert_error(r, 415, "unsupported_media_type", "multipart/form-data")
    assert_nothing_left()


def test_truncated_multipart_body_is_400(client, auth) -> None:
    boundary = "xyz"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\na\n1\n'
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary}"}
    assert_error(client.post(UPLOAD_URL, headers=headers, content=body), 400, "invalid_multipart", "truncated")
    assert_nothing_left()


def test_upload_needs_an_api_key(client) -> None:
    assert_error(upload(client, {}, "a.csv", b"a\n1\n"), 401, "unauthorized")
    assert_nothing_left()


def test_csv_with_a_column_name_longer_than_pythons_csv_field_limit(client, auth) -> None:
    # 200 KiB: past the csv module's default field limit (128 KiB), within the header limit (512 KiB).
    name = "n" * (200 * 1024)
    response = upload(client, auth, "long.csv", f"{name},b\n1,2\n".encode())
    assert response.status_code == 201, response.text
    assert [c["name"] for c in response.json()["columns"]] == [name, "b"]
