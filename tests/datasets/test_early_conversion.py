"""A CSV is converted to Parquet while it arrives; the result equals the usual conversion's."""

from __future__ import annotations

import threading
import time

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from app.datasets import inspection
from app.datasets.early_conversion import EarlyConversionStopped, GrowingFile
from app.datasets.upload import MultipartUploadSink
from app.storage import get_storage

HEAD = b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="t.csv"\r\n\r\n'
TAIL = b"\r\n--bnd--\r\n"


def _csv(rows: int) -> bytes:
    return ("a,b,c\n" + "".join(f"{i},x{i % 7},{i * 0.5}\n" for i in range(rows))).encode()


def _receive(content: bytes, chunk: int = 64 * 1024):
    sink = MultipartUploadSink(b"bnd", get_storage(), 10**9)
    sink.write(HEAD)
    for start in range(0, len(content), chunk):
        sink.write(content[start : start + chunk])
    sink.write(TAIL)
    return sink.finish()


def test_the_early_parquet_is_used_and_equals_the_usual_conversion(sqlite_env, tmp_path) -> None:
    upload = _receive(_csv(200_000))
    try:
        content = inspection.inspect_upload(
            upload.path, upload.format, "t.csv", tmp_path, 10**9, upload.early, upload.text
        )
        assert upload.early is not None and content.stored_path == upload.early.output
        usual = tmp_path / "usual.parquet"
        rows, columns = inspection.convert_csv_to_parquet(upload.path, usual, "t.csv")
        assert (content.num_rows, content.columns) == (rows, columns) == (200_000, columns)
        assert pq.read_table(content.stored_path).equals(pq.read_table(usual))
    finally:
        upload.discard_early()
    assert not upload.early.output.exists()


def test_a_later_block_needing_a_wider_type_falls_back_to_the_usual_conversion(sqlite_env, tmp_path) -> None:
    content_bytes = _csv(200_000) + b"word,x,1.0\n"  # column a: integers, then a word far past block 1
    upload = _receive(content_bytes)
    try:
        content = inspection.inspect_upload(
            upload.path, upload.format, "t.csv", tmp_path, 10**9, upload.early, upload.text
        )
        assert upload.early is not None and content.stored_path != upload.early.output
        assert [c["dtype"] for c in content.columns] == ["string", "string", "float64"]
        assert content.num_rows == 200_001
    finally:
        upload.discard_early()


def test_an_upload_abandoned_midway_stops_the_early_conversion(sqlite_env) -> None:
    sink = MultipartUploadSink(b"bnd", get_storage(), 10**9)
    sink.write(HEAD)
    sink.write(_csv(50_000)[:300_000])  # the client goes away here
    done = threading.Event()

    def discard() -> None:
        sink.discard()
        done.set()

    threading.Thread(target=discard, daemon=True).start()
    assert done.wait(30), "discard hung on the early conversion"
    time.sleep(0.1)
    assert list(get_storage().temp_dir.iterdir()) == []


def test_a_header_about_as_long_as_the_early_conversions_block_converts_as_usual(sqlite_env, tmp_path) -> None:
    # The early conversion reads blocks of EARLY_CSV_BLOCK_BYTES (smaller than the usual conversion's):
    # a header of nearly that size, followed by rows, still gives the usual conversion's table.
    assert inspection.EARLY_CSV_BLOCK_BYTES <= inspection.CSV_BLOCK_BYTES
    width = 1000
    names = [f"c{i:04d}" + "n" * (inspection.MAX_HEADER_BYTES // width - 8) for i in range(width)]
    header = ",".join(names) + "\n"
    assert inspection.EARLY_CSV_BLOCK_BYTES - 8 * width < len(header) <= inspection.MAX_HEADER_BYTES
    rows_text = "".join(",".join([str(i)] * (width - 1) + [f"{i * 0.5}"]) + "\n" for i in range(2_000))
    upload = _receive((header + rows_text).encode())
    try:
        content = inspection.inspect_upload(
            upload.path, upload.format, "t.csv", tmp_path, 10**9, upload.early, upload.text
        )
        usual = tmp_path / "usual.parquet"
        rows, columns = inspection.convert_csv_to_parquet(upload.path, usual, "t.csv")
        assert (content.num_rows, content.columns) == (rows, columns)
        assert rows == 2_000 and [c["dtype"] for c in columns] == ["int64"] * (width - 1) + ["float64"]
        assert pq.read_table(content.stored_path).equals(pq.read_table(usual))
    finally:
        upload.discard_early()


def test_a_read_of_the_growing_spool_waits_for_a_whole_block(tmp_path) -> None:
    # Arrow parses every read as a block of its own: a reader that caught up with the upload must get
    # the block it asked for, not the few bytes just written (many tiny blocks cost CPU).
    spool = tmp_path / "spool"
    spool.write_bytes(b"")
    growing = GrowingFile(spool)
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(len(growing.read(1000)) for _ in range(2)), daemon=True)
    reader.start()
    with spool.open("ab") as f:
        for size in range(10, 1501, 10):  # 150 small appends, as a slow upload would make them
            f.write(b"x" * 10)
            f.flush()
            growing.grew(size)
            time.sleep(0.0005)
    growing.finish()
    reader.join(10)
    assert got == [1000, 500]  # a whole block, then what was left at the end
    growing.close()


def test_a_growing_read_ends_with_the_upload_and_stops_on_abort(tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"abc")
    growing = GrowingFile(spool)
    growing.grew(3)
    growing.finish()
    assert bytes(growing.read(100)) == b"abc" and len(growing.read(100)) == 0
    growing.close()
    stopped = GrowingFile(spool)
    stopped.grew(1)
    threading.Timer(0.05, stopped.abort).start()
    with pytest.raises(EarlyConversionStopped):
        stopped.read(100)
    stopped.close()


def test_integer_columns_are_delta_encoded_and_read_back_equal(sqlite_env, tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(_csv(50_000))  # a: integers, b: text, c: floats
    inspection.convert_csv_to_parquet(path, tmp_path / "t.parquet", "t.csv")
    stored = pq.ParquetFile(tmp_path / "t.parquet")
    chunk = stored.metadata.row_group(0)
    encodings = {chunk.column(i).path_in_schema: set(chunk.column(i).encodings) for i in range(3)}
    assert "DELTA_BINARY_PACKED" in encodings["a"]
    assert "DELTA_BINARY_PACKED" not in encodings["b"] | encodings["c"]
    expected = pa_csv.read_csv(path)
    assert stored.read().equals(expected)
