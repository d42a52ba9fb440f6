"""Hostile uploads and stored values: a 4xx naming the problem, or a preview that works, never a 500."""

from __future__ import annotations

import pyarrow as pa

from tests.datasets.conftest import (
    UPLOAD_URL,
    assert_error,
    assert_nothing_left,
    multipart_chunks,
    parquet_bytes,
    upload,
)


def test_boundary_longer_than_the_parser_takes_is_400_invalid_multipart(client, auth) -> None:
    boundary = "x" * 300
    body = b"".join(multipart_chunks(boundary.encode(), "a.csv", [b"a\n1\n"]))
    headers = {**auth, "content-type": f"multipart/form-data; boundary={boundary}"}
    err = assert_error(client.post(UPLOAD_URL, headers=headers, content=body), 400, "invalid_multipart", "boundary")
    assert "300" in err["message"] and "256" in err["message"]
    assert_error(client.post(UPLOAD_URL, headers=headers, content=b"x"), 400, "invalid_multipart", "boundary")
    assert_nothing_left()
    # The longest boundary the parser takes still works.
    ok = "y" * 256
    body = b"".join(multipart_chunks(ok.encode(), "a.csv", [b"a\n1\n"]))
    r = client.post(UPLOAD_URL, headers={**auth, "content-type": f"multipart/form-data; boundary={ok}"}, content=body)
    assert r.status_code == 201, r.text


def test_preview_of_values_beyond_python_date_range_works(client, auth) -> None:
    table = pa.table(
        {
            "t": pa.array([-(2**62), 2**62, 0, None], pa.timestamp("us")),
            "ns": pa.array([1, 2**62, 0, None], pa.timestamp("ns", tz="UTC")),
            "d": pa.array([2**31 - 1, 0, 1, None], pa.date32()),
            "dur": pa.array([2**62, 1, 2, None], pa.duration("s")),
            "nested": pa.array([[2**62], [0], [], None], pa.list_(pa.timestamp("us"))),
            "x": [1.0, 2.0, 3.0, 4.0],
        }
    )
    r = upload(client, auth, "dates.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    preview = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview", headers=auth)
    assert preview.status_code == 200, preview.text
    rows = preview.json()["rows"]
    assert [row["x"] for row in rows] == [1.0, 2.0, 3.0, 4.0]
    assert rows[0]["t"] == f"out of range: {-(2**62)} us since 1970-01-01"
    assert rows[2]["t"] == "1970-01-01T00:00:00" and rows[3]["t"] is None
    assert rows[0]["ns"] == "1970-01-01T00:00:00.000000001+00:00"  # exact: no microsecond rounding
    assert rows[1]["ns"].startswith("2116-02-20T")
    assert rows[0]["d"] == f"out of range: {2**31 - 1} days since 1970-01-01" and rows[1]["d"] == "1970-01-01"
    assert rows[0]["dur"] == float(2**62) and rows[1]["dur"] == 1.0
    # Inside a list too: the out-of-range value says so (the whole cell was null before).
    assert rows[0]["nested"] == [f"out of range: {2**62} us since 1970-01-01"]
    assert rows[1]["nested"] == ["1970-01-01T00:00:00"]


def test_utf16_and_utf32_csv_are_invalid_encoding_naming_it(client, auth) -> None:
    text = "a,b\n1,2\n3,4\n"
    cases = {
        "UTF-16": ["utf-16", "utf-16-le", "utf-16-be"],  # with a byte-order mark, and without (Windows exports)
        "UTF-32": ["utf-32"],
    }
    for name, encodings in cases.items():
        for encoding in encodings:
            err = assert_error(
                upload(client, auth, "wide.csv", text.encode(encoding)), 422, "invalid_encoding", name, "UTF-8"
            )
            assert err["details"]["encoding"] == name, (encoding, err)
    assert_nothing_left()
    # A NUL inside otherwise plain text is still binary data (415), not a text encoding.
    assert_error(upload(client, auth, "nul.csv", b"a,b\n1,2\x00\x00\x00\x01\x02\x03\x04\n"), 415, "unsupported_format")
    # One stray NUL in a text file near its start is that text's problem, named by line (as later on).
    text = b"a,b\n1,\x002\n" + b"3,4\n" * 200
    assert_error(upload(client, auth, "stray.csv", text), 422, "nul_character", "line 2")


def test_column_names_with_control_characters_are_refused(client, auth) -> None:
    for name in ("a\x00", "tab\there", "esc\x1b[31m"):
        content = parquet_bytes(pa.table({name: [1.0, 2.0], "b": [3.0, 4.0]}))
        err = assert_error(
            upload(client, auth, "cols.parquet", content), 422, "invalid_column_name", "control characters"
        )
        assert err["details"]["columns"] == [name]
    csv_err = assert_error(upload(client, auth, "cols.csv", b"a\x1bb,c\n1,2\n"), 422, "invalid_column_name")
    assert csv_err["details"]["columns"] == ["a\x1bb"]
    assert_nothing_left()
    # Any printable name is fine, in any script.
    ok = upload(client, auth, "ok.parquet", parquet_bytes(pa.table({"température °C": [1.0], "予測": [2.0]})))
    assert ok.status_code == 201, ok.text
