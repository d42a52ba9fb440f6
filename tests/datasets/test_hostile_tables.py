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


def test_parquet_of_small_integers_is_counted_at_their_arrow_width(client, auth, monkeypatch) -> None:
    """200 int8 one-hot columns of 200,000 rows: 40 MB in Arrow (under the 64 MiB floor) from a file
    of about 1 MB, refused as "about 160000000 bytes decoded": Parquet stores int8 as INT32."""
    set_setting(monkeypatch, max_compression_ratio="100", compression_ratio_floor_bytes=str(64 * 1024**2))
    rows, width = 200_000, 200
    hot = np.random.default_rng(0).integers(0, width, rows)
    table = pa.table({f"c{i}": (hot == i).astype(np.int8) for i in range(width)})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    content = sink.getvalue()
    assert table.nbytes == 40_000_000 and len(content) < 2_000_000
    limit, _ = inspection.decompression_limit(len(content))
    assert limit < 160_000_000  # what the physical width declared
    r = upload(client, auth, "onehot.parquet", content)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["num_rows"] == rows and {c["dtype"] for c in body["columns"]} == {"int8"}


def test_parquet_of_dictionary_encoded_floats_is_not_refused_for_its_pages(tmp_path: Path) -> None:
    """Float32 columns that fell back from dictionary to plain pages declare about 1.4 times their
    Arrow size in uncompressed pages (500 x 20,000 values, 41.25 MB decoded, declared 58.8 MB and
    refused under a 50 MB limit); the values' count at their width is what they decode to."""
    columns, rows = 100, 20_000
    rng = np.random.default_rng(1)
    table = pa.table({f"f{i}": rng.standard_normal(rows).astype(np.float32) for i in range(columns)})
    path = tmp_path / "floats.parquet"
    pq.write_table(table, path, compression="zstd")
    metadata = pq.ParquetFile(path).metadata
    pages = sum(metadata.row_group(0).column(c).total_uncompressed_size for c in range(columns))
    limit = 10_000_000
    assert table.nbytes == 8_000_000 and pages > limit  # the old estimate's refusal
    num_rows, summary = inspection.inspect_parquet(path, "floats.parquet", limit)
    assert num_rows == rows and len(summary) == columns
    # The scan still decides: under the decoded size, the same file is refused.
    with pytest.raises(AppError) as err:
        inspection.inspect_parquet(path, "floats.parquet", 7_000_000)
    assert err.value.code == "file_too_large"


def test_parquet_footer_estimate_uses_arrow_widths_of_nested_and_decimal_leaves(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i8": pa.array([1, 2], pa.int8()),
            "l": pa.array([[1, 2, 3], [4]], pa.list_(pa.int16())),
            "m": pa.array([[("a", 1)], [("b", 2)]], pa.map_(pa.string(), pa.int32())),
            "s": pa.array([{"x": 1.0, "t": "q"}, {"x": 2.0, "t": "r"}]),
            "f": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2)),
            "d": pa.array([1.5, 2.25]).cast(pa.decimal128(5, 2)),
            "h": pa.array(np.ones(2, np.float16)),
        }
    )
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path, use_dictionary=False)
    parquet = pq.ParquetFile(path)
    widths = inspection._leaf_widths(parquet.schema_arrow, parquet.metadata)
    #        i8   l    m.key m.value s.x  s.t   f    d     h
    assert widths == [1.0, 2.0, None, 4.0, 8.0, None, 4.0, 16.0, 2.0]
    declared, pages = inspection._declared_decoded_bytes(parquet.metadata, parquet.schema_arrow)
    assert declared >= 2 + 8 + 8 + 16 + 16 + 32 + 4 and pages > 0


def test_parquet_pages_far_over_the_limit_are_refused_from_the_footer(tmp_path: Path, monkeypatch) -> None:
    """Pages are decompressed whole: uncompressed pages many times the limit are refused unread."""
    # 2000 distinct 2 KB texts: the dictionary page fills and falls back to plain pages, 4 MB of them
    # zstd holds in a few KB; a dictionary-encoded chunk declares only its offsets decoded.
    path = tmp_path / "pages.parquet"
    text = ["t" * 2000 + str(i) for i in range(2000)]
    pq.write_table(pa.table({"s": text}), path, compression="zstd")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).has_dictionary_page

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pages were read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_reading)
    with pytest.raises(AppError) as err:
        inspection.inspect_parquet(path, "pages.parquet", 100_000)
    assert err.value.code == "file_too_large" and "pages of" in err.value.message


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


def test_preview_bounds_fixed_size_lists_maps_and_lists_at_any_depth(client, auth) -> None:
    """A fixed_size_list<float, 100> cell was sent whole, as were maps and lists inside structs."""
    rows = 3
    items = service.MAX_PREVIEW_CELL_ITEMS
    limit = service.MAX_PREVIEW_CELL_CHARS
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(100 * rows, dtype=np.float32)), 100)
    table = pa.table(
        {
            "fixed": fixed,
            "map": pa.array(
                [[(f"k{i}", i) for i in range(120)]] * (rows - 1) + [None], pa.map_(pa.string(), pa.int64())
            ),
            "struct": pa.array([{"v": list(range(80)), "t": "w" * 300}] * (rows - 1) + [None]),
            "deep": pa.array([[list(range(70))] * 60] * rows, pa.list_(pa.list_(pa.int32()))),
            "records": pa.array([[{"xs": list(range(55))}]] * rows),
            "short": pa.array([[1, 2]] * rows, pa.list_(pa.int8(), 2)),
        }
    )
    r = upload(client, auth, "nested.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    preview = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview?rows=10", headers=auth)
    assert preview.status_code == 200, preview.text
    cells = preview.json()["rows"]
    assert len(cells) == rows
    assert cells[1]["fixed"] == [float(v) for v in range(100, 100 + items)] + ["… [100 items, truncated]"]
    assert cells[0]["map"] == [[f"k{i}", i] for i in range(items)] + ["… [120 items, truncated]"]
    assert cells[2]["map"] is None
    assert cells[0]["struct"] == {
        "v": [*range(items), "… [80 items, truncated]"],
        "t": "w" * limit + "… [300 characters, truncated]",
    }
    assert cells[2]["struct"] is None
    inner = [*range(items), "… [70 items, truncated]"]
    assert cells[0]["deep"] == [inner] * items + ["… [60 items, truncated]"]
    assert cells[0]["records"] == [{"xs": [*range(items), "… [55 items, truncated]"]}]
    assert cells[0]["short"] == [1, 2]  # short lists are untouched
    assert len(preview.content) < 100_000


def test_preview_byte_budget_counts_utf8_bytes(client, auth, monkeypatch) -> None:
    """The ~4 MiB cap counted characters: text of two-byte characters took twice the budget."""
    table = pa.table({"s": ["é" * 150] * 200})  # about 160 characters a row, 310 bytes
    r = upload(client, auth, "accents.parquet", parquet_bytes(table))
    assert r.status_code == 201, r.text
    monkeypatch.setattr(service, "MAX_PREVIEW_BYTES", 3100)
    preview = client.get(f"{UPLOAD_URL}/{r.json()['id']}/preview?rows=200", headers=auth)
    rows = preview.json()["rows"]
    assert 8 <= len(rows) <= 10  # counted in characters, 19 rows fit
    assert sum(len(json.dumps(row, ensure_ascii=False).encode()) for row in rows) <= 3100


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


@pytest.mark.parametrize(
    "name",
    [
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: ZWNJ is part of the spelling
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji: ZWJ sequence
        "tem\u00adperature",  # soft hyphen
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # flag: tag characters
    ],
)
def test_column_names_spelled_with_zwnj_zwj_or_soft_hyphen_are_accepted(client, auth, name: str) -> None:
    """Refusing every Unicode Cf took ZWNJ, ZWJ and the soft hyphen (422 invalid_column_name)."""
    for filename, content in (
        ("spelled.csv", f"{name},b\n1,2\n".encode()),
        ("spelled.parquet", parquet_bytes(pa.table({name: [1.0], "b": [2.0]}))),
    ):
        r = upload(client, auth, filename, content)
        assert r.status_code == 201, (filename, r.text)
        assert [c["name"] for c in r.json()["columns"]] == [name, "b"]


@pytest.mark.parametrize(
    "char", ["\u202e", "\u202a", "\u2066", "\u200e", "\u061c", "\u200b", "\u2060", "\ufeff", "\x1b"]
)
def test_column_names_with_bidi_controls_or_zero_width_spaces_are_still_refused(client, auth, char: str) -> None:
    code_point = f"U+{ord(char):04X}"
    err = assert_error(
        upload(client, auth, "hidden.csv", f"b,a{char}\n1,2\n".encode()),
        422,
        "invalid_column_name",
        code_point,
    )
    assert err["details"]["characters"] == [[code_point]]
    assert inspection.look_alike_characters(f"a{char}\u200c\u200d\u00ad") == [code_point]
    assert_nothing_left()


def test_nan_the_csv_reader_does_not_take_for_null_counts_as_missing(client, auth) -> None:
    """Arrow reads "NaN" as null but "NAN" as a float NaN; the summary counts both as missing, as jobs do."""
    r = upload(client, auth, "nan.csv", b"x,y\n1.5,a\nNAN,b\nNaN,c\n-NAN,d\n2.5,e\n")
    assert r.status_code == 201, r.text
    assert {c["name"]: c["missing"] for c in r.json()["columns"]} == {"x": 3, "y": 0}
