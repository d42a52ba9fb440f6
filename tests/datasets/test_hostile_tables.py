"""Hostile tables: Parquet that decodes to far more than it weighs, previews of huge cells, CSV with
classic Mac OS line endings, invisible characters in column names, NaN as a missing value."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.datasets import inspection, service
from app.errors import AppError
from tests.datasets.conftest import (
    UPLOAD_URL,
    assert_error,
    assert_nothing_left,
    parquet_bytes,
    set_setting,
    upload,
)


def repeated_text_parquet(rows: int, chars: int, **write: object) -> bytes:
    """``rows`` copies of one ``chars``-long string, dictionary-encoded: a few KiB whatever it decodes to."""
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["a" * chars]))
    sink = io.BytesIO()
    table = pa.table({"y": np.arange(rows, dtype=float), "s": text})
    pq.write_table(table, sink, compression="zstd", store_schema=False, **write)  # type: ignore[arg-type]
    return sink.getvalue()


def zeros_parquet(rows: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": np.zeros(rows), "b": np.zeros(rows)}), sink, compression="zstd")
    return sink.getvalue()


def repeated_list_parquet(items: int, chars: int) -> bytes:
    """One row holding a list of ``items`` copies of a dictionary-encoded ``chars``-long string."""
    values = pa.DictionaryArray.from_arrays(pa.array(np.zeros(items, np.int32)), pa.array(["b" * chars]))
    column = pa.ListArray.from_arrays(pa.array([0, items], pa.int32()), values)
    sink = io.BytesIO()
    pq.write_table(pa.table({"y": [1.0], "l": column}), sink, compression="zstd", store_schema=False)
    return sink.getvalue()


# -- Parquet decompression bombs --------------------------------------------------------------------


def test_parquet_of_repeated_long_text_is_refused_like_a_gzip_bomb(client, auth, monkeypatch) -> None:
    """4 KB of Parquet (1500 rows of one 1 MiB dictionary value) uploaded with 201 and took the API
    to 3.3 GB; it is now refused by the ratio limit as it is counted, before it is expanded."""
    set_setting(monkeypatch, compression_ratio_floor_bytes="1000000")
    content = repeated_text_parquet(rows=400, chars=32 * 1024)  # 13 MB decoded from about 3 KB
    assert len(content) < 10_000
    err = assert_error(upload(client, auth, "bigstr.parquet", content), 413, "compression_ratio", "bigstr.parquet")
    assert err["details"]["limit_bytes"] == 1_000_000
    assert_nothing_left()
    # Past RNNLAB_MAX_DECOMPRESSED_BYTES it is the same file_too_large as a .csv.gz or .npz.
    set_setting(monkeypatch, compression_ratio_floor_bytes="100000000", max_decompressed_bytes="2000000")
    err = assert_error(upload(client, auth, "bigstr.parquet", content), 413, "file_too_large", "decompressed")
    assert err["details"]["limit_bytes"] == 2_000_000
    assert_nothing_left()


def test_parquet_of_many_zero_rows_is_refused_from_its_footer(client, auth, monkeypatch) -> None:
    """20,971,520 rows of zeros in 190 KB passed; the footer's value counts tell before any page is read."""
    set_setting(monkeypatch, compression_ratio_floor_bytes="1000000")
    content = zeros_parquet(200_000)  # 3.2 MB of float64 in a few KB

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pages were read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_reading)
    err = assert_error(upload(client, auth, "zeros.parquet", content), 413, "compression_ratio", "3200000 bytes")
    assert err["details"]["limit_bytes"] == 1_000_000
    assert_nothing_left()


def test_parquet_list_of_repeated_text_in_one_row_is_refused(client, auth, monkeypatch) -> None:
    """One row can hold the bomb: batches of few rows are no bound, so dictionaries stay dictionaries."""
    set_setting(monkeypatch, compression_ratio_floor_bytes="1000000")
    content = repeated_list_parquet(items=400, chars=32 * 1024)
    assert_error(upload(client, auth, "list.parquet", content), 413, "compression_ratio", "list.parquet")
    assert_nothing_left()


def test_parquet_bomb_is_counted_without_expanding_it(tmp_path: Path) -> None:
    """1500 rows of a 1 MiB value (the reported file): refused after reading the dictionary once."""
    path = tmp_path / "bigstr.parquet"
    path.write_bytes(repeated_text_parquet(rows=1500, chars=1 << 20))
    pool = pa.default_memory_pool()
    before = pool.max_memory()
    with pytest.raises(AppError) as err:
        inspection.inspect_parquet(path, "bigstr.parquet", 1 << 30)
    assert err.value.code == "compression_ratio"
    # The decoded column is 1.5 GB; what Arrow allocated stays near the one 1 MiB value.
    assert pool.max_memory() - before < 64 * 1024 * 1024


def test_parquet_under_the_limits_still_uploads_and_counts_nan_as_missing(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, compression_ratio_floor_bytes="1000000")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000)
    x[[3, 7]] = np.nan
    table = pa.table(
        {
            "x": x,
            "h": pa.array(np.r_[np.float16(np.nan), np.ones(4999, np.float16)]),
            "name": [f"n{i % 50}" for i in range(5000)],
            "n": pa.array([None] + list(range(4999))),
        }
    )
    r = upload(client, auth, "ok.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    missing = {c["name"]: c["missing"] for c in r.json()["columns"]}
    assert missing == {"x": 2, "h": 1, "name": 0, "n": 1}


# -- previews of long cells -------------------------------------------------------------------------


def test_preview_cuts_long_cells_and_stays_small(client, auth) -> None:
    """A preview of 100 rows of a 1 MiB value was a 105 MB response."""
    rows = 30
    long_text = "é" * 100_000
    table = pa.table(
        {
            "y": np.arange(rows, dtype=float),
            "s": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([long_text])),
            "plain": ["p" * 5000] * (rows - 1) + ["short"],
            "raw": pa.array([b"\x01" * 3000] * rows),
            "l": pa.array([list(range(1000))] * rows),
            "nested": pa.array([{"t": "q" * 1000}] * rows),
        }
    )
    r = upload(client, auth, "long.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    preview = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview?rows=100", headers=auth)
    assert preview.status_code == 200, preview.text
    assert len(preview.content) < 200_000
    cells = preview.json()["rows"]
    assert len(cells) == rows
    limit = service.MAX_PREVIEW_CELL_CHARS
    assert cells[0]["s"] == "é" * limit + "… [100000 characters, truncated]"
    assert cells[0]["plain"] == "p" * limit + "… [5000 characters, truncated]"
    assert cells[-1]["plain"] == "short"  # short values are untouched
    assert cells[0]["raw"] == "\x01" * limit + "… [3000 bytes, truncated]"
    items = service.MAX_PREVIEW_CELL_ITEMS
    assert cells[0]["l"] == [*range(items), "… [1000 items, truncated]"]
    assert cells[0]["nested"] == {"t": "q" * limit + "… [1000 characters, truncated]"}
    assert cells[0]["y"] == 0.0 and cells[-1]["y"] == float(rows - 1)


def test_preview_stops_at_its_byte_budget(client, auth, monkeypatch) -> None:
    table = pa.table({"s": ["x" * 150] * 200})
    r = upload(client, auth, "many.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    monkeypatch.setattr(service, "MAX_PREVIEW_BYTES", 2000)
    body = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview?rows=200", headers=auth).json()
    assert 5 <= len(body["rows"]) < 20  # about 160 bytes a row
    monkeypatch.setattr(service, "MAX_PREVIEW_BYTES", 10)
    body = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview?rows=200", headers=auth).json()
    assert len(body["rows"]) == 1  # always one row


def test_preview_of_npz_long_strings_is_bounded(client, auth, monkeypatch) -> None:
    content = io.BytesIO()
    np.savez(content, X=np.zeros((4, 2)), names=np.array(["z" * 3000] * 4))
    r = upload(client, auth, "names.npz", content.getvalue())
    assert r.status_code == 201, r.text
    monkeypatch.setattr(service, "MAX_PREVIEW_BYTES", 30_000)  # 12,000 bytes an entry: two fit
    arrays = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview", headers=auth).json()["arrays"]
    assert arrays["names"]["shown"] == 2
    assert arrays["names"]["head"][0] == "z" * service.MAX_PREVIEW_CELL_CHARS + "… [3000 characters, truncated]"


# -- CSV line endings -------------------------------------------------------------------------------


def cr_only_csv(rows: int) -> bytes:
    return ("a,b\r" + "".join(f"{i},{i % 7}\r" for i in range(rows))).encode()


@pytest.mark.parametrize("rows", [100, 100_000])
def test_csv_with_cr_only_line_endings_is_read(client, auth, rows) -> None:
    """Classic Mac OS line endings: the header check read up to LF and failed (500), or called the
    whole file one over-long header line; Arrow reads such files."""
    for filename, content in (("cr.csv", cr_only_csv(rows)), ("cr.csv.gz", gzip.compress(cr_only_csv(rows)))):
        r = upload(client, auth, filename, content)
        assert r.status_code == 201, (filename, r.text)
        body = r.json()
        assert body["num_rows"] == rows and [c["name"] for c in body["columns"]] == ["a", "b"]
        preview = client.get(f"{UPLOAD_URL}/{body['id']}/preview?rows=3", headers=auth).json()
        assert preview["rows"] == [{"a": 0, "b": 0}, {"a": 1, "b": 1}, {"a": 2, "b": 2}]


def test_a_header_the_csv_module_cannot_read_is_a_422(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "h.csv"
    path.write_bytes(b"a,b\n1,2\n")

    def broken(*args: object, **kwargs: object) -> object:
        raise csv.Error("new-line character seen in unquoted field")

    monkeypatch.setattr(inspection.csv, "reader", broken)
    with pytest.raises(AppError) as err:
        inspection.check_csv_header(path, "h.csv", 10)
    assert err.value.code == "unparseable_csv" and "line 1" in err.value.message


# -- column names -----------------------------------------------------------------------------------


def test_invisible_characters_in_column_names_are_refused_naming_the_column(client, auth) -> None:
    """``a\\u200b`` and ``a`` look identical; U+202E displays a name reversed."""
    cases = {
        "zw.csv": "a\u200b,a\n1,2\n".encode(),
        "bidi.csv": "a\u202e,b\n1,2\n".encode(),
        "zw.parquet": parquet_bytes(pa.table({"a\u200b": [1.0], "a": [2.0]})),
        "bom.parquet": parquet_bytes(pa.table({"x": [1.0], "\ufeffy": [2.0]})),
    }
    expected = {
        "zw.csv": (0, "a\u200b", "'a\\u200b'", "U+200B"),
        "bidi.csv": (0, "a\u202e", "'a\\u202e'", "U+202E"),
        "zw.parquet": (0, "a\u200b", "'a\\u200b'", "U+200B"),
        "bom.parquet": (1, "\ufeffy", "'\\ufeffy'", "U+FEFF"),
    }
    for filename, content in cases.items():
        index, name, escaped, code_point = expected[filename]
        err = assert_error(
            upload(client, auth, filename, content),
            422,
            "invalid_column_name",
            f"column {index} {escaped} ({code_point})",
            "invisible",
        )
        assert err["details"]["columns"] == [name]
        assert err["details"]["column_indices"] == [index]
        assert err["details"]["characters"] == [[code_point]]
    assert_nothing_left()
    # A CSV's byte-order mark is no part of its first column's name.
    r = upload(client, auth, "bom.csv", "\ufeffa,b\n1,2\n".encode())
    assert r.status_code == 201, r.text
    assert [c["name"] for c in r.json()["columns"]] == ["a", "b"]
    assert json.loads(r.text)["columns"][0]["name"] == "a"


def test_nan_the_csv_reader_does_not_take_for_null_counts_as_missing(client, auth) -> None:
    """Arrow reads "NaN" as null but "NAN" as a float NaN; the summary counts both as missing, as jobs do."""
    r = upload(client, auth, "nan.csv", b"x,y\n1.5,a\nNAN,b\nNaN,c\n-NAN,d\n2.5,e\n")
    assert r.status_code == 201, r.text
    assert {c["name"]: c["missing"] for c in r.json()["columns"]} == {"x": 3, "y": 0}
