"""The CSV conversion reads with the types Arrow infers from its first block, pinned: the same
types and the same table as Arrow's own inferring read, at less CPU (see first_block_types)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from app.datasets import inspection
from app.datasets.inspection import CSV_BLOCK_BYTES, first_block_types

BLOCK = CSV_BLOCK_BYTES


def _mixed_csv(rows: int, *, newline: str = "\n", bom: bool = False) -> bytes:
    """Integers, floats, text with gaps, booleans, timestamps: many blocks, rows cut at block ends."""
    lines = ["n,x,label,flag,at"]
    for i in range(rows):
        label = "" if i % 11 == 0 else f"s{i % 13}"
        lines.append(f"{i},{i * 0.25:.2f},{label},{'true' if i % 3 else 'false'},2026-01-{1 + i % 28:02d} 10:00:00")
    text = newline.join(lines) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def _arrow_inferring_read(path: Path):
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=BLOCK, use_threads=False),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
    )
    return reader.read_all()


@pytest.mark.parametrize(("newline", "bom"), [("\n", False), ("\r\n", False), ("\n", True)])
def test_the_types_are_those_arrow_infers_from_its_first_block(tmp_path, newline, bom) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(_mixed_csv(120_000, newline=newline, bom=bom))
    assert path.stat().st_size > 4 * BLOCK
    expected = _arrow_inferring_read(path).schema
    assert first_block_types(path, BLOCK) == {f.name: f.type for f in expected}
    assert [str(t) for t in first_block_types(path, BLOCK).values()] == [
        "int64",
        "double",
        "string",
        "bool",
        "timestamp[s]",
    ]


def test_the_converted_table_equals_arrows_own_inferring_read(sqlite_env, tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(_mixed_csv(120_000))
    rows, columns = inspection.convert_csv_to_parquet(path, tmp_path / "t.parquet", "t.csv")
    assert rows == 120_000
    assert [c["missing"] for c in columns if c["name"] == "label"] == [sum(1 for i in range(120_000) if i % 11 == 0)]
    stored, expected = pq.read_table(tmp_path / "t.parquet"), _arrow_inferring_read(path)
    # Parquet has no seconds unit: timestamp[s] comes back as timestamp[ms], as it always did.
    assert str(stored.schema.field("at").type) == "timestamp[ms]"
    assert stored.equals(expected.cast(stored.schema))


def test_a_file_shorter_than_a_block_is_read_whole(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n1,x\n2,y")  # no line end after the last row
    assert {k: str(v) for k, v in first_block_types(path, BLOCK).items()} == {"a": "int64", "b": "string"}


def test_a_column_without_values_in_the_first_block_is_left_to_inference(sqlite_env, tmp_path) -> None:
    # Arrow types such a column `null` and fails on its first value further on; the conversion then
    # finds every column's type in one pass (as before): nothing pinned changes that.
    rows = "".join(f"{i},,x\n" for i in range(200_000)) + "".join(f"{i},{i * 0.5},y\n" for i in range(60_000))
    path = tmp_path / "t.csv"
    path.write_bytes(("a,b,c\n" + rows).encode())
    assert {k: str(v) for k, v in first_block_types(path, BLOCK).items()} == {"a": "int64", "c": "string"}
    count, columns = inspection.convert_csv_to_parquet(path, tmp_path / "t.parquet", "t.csv")
    assert count == 260_000
    assert [c["dtype"] for c in columns] == ["int64", "float64", "string"]


def test_a_first_block_without_a_line_end_pins_nothing(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b\n" + b"1," + b"x" * (2 * BLOCK) + b"\n2,y\n")
    assert first_block_types(path, BLOCK) == {}


def test_duplicate_names_pin_nothing_and_are_reported_as_before(sqlite_env, tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,a\n1,x\n2,y\n")
    assert first_block_types(path, BLOCK) == {}
    with pytest.raises(Exception) as raised:
        inspection.convert_csv_to_parquet(path, tmp_path / "t.parquet", "t.csv")
    assert getattr(raised.value, "code", None) == "duplicate_columns"


def test_the_conversion_reads_with_the_first_blocks_types_pinned(sqlite_env, tmp_path, monkeypatch) -> None:
    seen: list[dict[str, str]] = []
    real_open_csv = inspection.pa_csv.open_csv

    def spy(source, *args, **kwargs):
        if not isinstance(source, inspection.pa.BufferReader):  # the first block's own read
            options = kwargs["convert_options"]
            seen.append({name: str(t) for name, t in options.column_types.items()})
        return real_open_csv(source, *args, **kwargs)

    monkeypatch.setattr(inspection.pa_csv, "open_csv", spy)
    path = tmp_path / "t.csv"
    path.write_bytes(_mixed_csv(120_000))
    inspection.convert_csv_to_parquet(path, tmp_path / "t.parquet", "t.csv")
    assert seen == [{"n": "int64", "x": "double", "label": "string", "flag": "bool", "at": "timestamp[s]"}]
