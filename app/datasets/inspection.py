"""Validating and describing uploaded content, and turning tables into the Parquet the workers read.

Everything here streams: CSV is read block by block and written to Parquet batch by batch, gzip
is decompressed chunk by chunk, Parquet is scanned one column at a time and NPZ members are
described from their ``.npy`` headers without loading their data.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import math
import os
import queue
import re
import sys
import threading
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from app.config import get_settings
from app.datasets.early_conversion import (
    EarlyConversion,
    EarlyConversionStopped,
    GrowingFile,
    conversion_memory_pool,
)
from app.datasets.formats import DatasetFormat, hidden_characters
from app.errors import AppError, InvalidInput, TooLarge

READ_CHUNK_BYTES = 1024 * 1024
CSV_BLOCK_BYTES = 1024 * 1024
# The early conversion's blocks (read from the growing spool): Arrow's streaming reader reads blocks
# ahead of the parser, which trails the upload, so many are held at once (read as Python bytes, 1 MiB
# blocks peaked at 40 MiB on Python's heap). These smaller blocks pay for the conversion pool's
# page decay (app.datasets.early_conversion): with both, the API's peak RSS during a 512 MiB upload
# to S3 was 225 MiB against 249 MiB with 1 MiB blocks and decay 0, at the same CPU within the noise.
# A header longer than a block makes the early conversion give up; the usual conversion (1 MiB
# blocks) then takes the file.
EARLY_CSV_BLOCK_BYTES = 512 * 1024
# Batches are gathered to about this size before they become one Parquet row group (8 MiB took the
# API's peak RSS about 20 MiB higher during a 512 MiB upload, for no measurable speed).
ROW_GROUP_BYTES = 4 * 1024 * 1024
MAX_ERROR_SNIPPET_CHARS = 200
# Longer than any header of RNNLAB_MAX_COLUMNS sensible names, shorter than Arrow's block.
MAX_HEADER_BYTES = CSV_BLOCK_BYTES // 2
# zstd: smaller and, on the tables measured, faster to write than snappy; every pyarrow build reads it.
PARQUET_COMPRESSION = "zstd"


@dataclass
class InspectedContent:
    """What an upload holds, and the file (still temporary) to store for the workers."""

    stored_path: Path
    suffix: str  # extension of the stored blob: ".parquet" or ".npz"
    num_rows: int | None = None
    columns: list[dict[str, Any]] | None = None
    arrays: dict[str, list[int]] | None = None


def inspect_upload(
    path: Path,
    fmt: DatasetFormat,
    filename: str,
    work_dir: Path,
    max_bytes: int,
    early: EarlyConversion | None = None,
    text: TextCheck | None = None,
) -> InspectedContent:
    """Validate the uploaded file at ``path`` and describe it.

    Tables are converted to Parquet inside ``work_dir`` (a private temporary directory the caller
    removes afterwards); Parquet and NPZ uploads are stored as they came. ``early`` is a conversion
    that ran while a CSV arrived: its Parquet is used when it succeeded and the checks pass; ``text``
    holds the UTF-8 checks of a CSV, made while it arrived.
    """
    if fmt == "npz":
        return InspectedContent(stored_path=path, suffix=".npz", arrays=inspect_npz(path, filename, max_bytes))
    if fmt == "parquet":
        num_rows, columns = inspect_parquet(path, filename, max_bytes)
        return InspectedContent(stored_path=path, suffix=".parquet", num_rows=num_rows, columns=columns)
    csv_path = path
    if fmt == "csv.gz":
        csv_path = work_dir / "decompressed.csv"
        decompress_gzip(path, csv_path, filename, max_bytes)
    elif text is not None:
        text.result(path, filename)
    else:
        check_utf8_file(path, filename)
    check_csv_header(csv_path, filename, get_settings().max_columns)
    converted = early.result() if early is not None and fmt == "csv" else None
    if converted is not None and early is not None:
        parquet_path = early.output
        num_rows, columns = converted
    else:
        parquet_path = work_dir / "table.parquet"
        num_rows, columns = convert_csv_to_parquet(csv_path, parquet_path, filename)
    return InspectedContent(stored_path=parquet_path, suffix=".parquet", num_rows=num_rows, columns=columns)


# -- text ----------------------------------------------------------------------------------------


class Utf8Checker:
    """Incremental UTF-8 validation that can say where the first bad byte is (offset and line)."""

    def __init__(self, filename: str) -> None:
        self._filename = filename
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0
        self._newlines = 0
        self.quotes = 0  # '"' characters seen: RFC 4180 quoting always pairs them

    def feed(self, chunk: bytes, final: bool = False) -> None:
        nul = chunk.find(b"\x00")
        if nul >= 0:
            # PostgreSQL cannot store a NUL in text: a column named "va\x00l" broke every filter.
            line = self._newlines + chunk.count(b"\n", 0, nul) + 1
            raise InvalidInput(
                "nul_character",
                f"{self._filename!r} holds a NUL character at byte offset {self._offset + nul} (line {line}); "
                "a CSV is text and may not hold NUL characters",
                {"byte_offset": self._offset + nul, "line": line},
            )
        self.quotes += chunk.count(b'"')
        buffered = len(self._decoder.getstate()[0])
        if not buffered and chunk.isascii():
            pass  # the common case needs no decoding at all
        else:
            try:
                self._decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's buffered bytes followed by this chunk; buffered bytes are
                # part of a multi-byte sequence, never a newline.
                offset = self._offset - buffered + exc.start
                line = self._newlines + exc.object.count(b"\n", 0, exc.start) + 1
                bad = exc.object[exc.start : exc.start + 4]
                raise InvalidInput(
                    "invalid_encoding",
                    f"{self._filename!r} is not valid UTF-8: byte offset {offset} (line {line}) "
                    f"starts {bad!r}; save the file as UTF-8",
                    {"byte_offset": offset, "line": line},
                ) from exc
        self._offset += len(chunk)
        self._newlines += chunk.count(b"\n")


class TextCheck:
    """:func:`check_utf8_file`'s checks, fed while the upload arrives instead of in a pass after it.

    Only what decides pass or fail is tracked here: NUL characters (``bytes.find``), quote parity
    (counted only in chunks that hold a quote) and UTF-8 (``bytes.isascii``, decoded only past ASCII),
    all in C. Counting lines for the error message cost as much as the rest together, so a failure is
    only noted, and :meth:`result` runs :func:`check_utf8_file` over the received file, which finds
    the same problem and names its offset and line. The failure is raised where the file check would
    have run, so errors keep their order (a bad name or a truncated body is still reported first).
    """

    def __init__(self, filename: str) -> None:
        self._filename = filename
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._failed = False
        self._quotes = 0

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self._failed:
            return
        if chunk.find(b"\x00") >= 0:
            self._failed = True
            return
        if chunk.find(b'"') >= 0:
            self._quotes += chunk.count(b'"')
        if chunk.isascii() and not self._decoder.getstate()[0]:
            return  # the common case needs no decoding at all
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            self._failed = True

    def result(self, path: Path, filename: str) -> None:
        if self._failed:
            check_utf8_file(path, filename)  # raises, naming where
            raise InvalidInput("invalid_encoding", f"{filename!r} is not valid UTF-8 text; save the file as UTF-8")
        if self._quotes % 2:
            raise _unterminated_quote(path, filename)


def check_utf8_file(path: Path, filename: str) -> None:
    """UTF-8 throughout, no NUL character, and every quoted field closed."""
    checker = Utf8Checker(filename)
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            checker.feed(chunk)
    checker.feed(b"", final=True)
    if checker.quotes % 2:
        raise _unterminated_quote(path, filename)


def _unterminated_quote(path: Path, filename: str) -> AppError:
    """The line where the quoted field that never closes begins (an error path: one more read)."""
    line, open_line, inside = 1, 1, False
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            position = 0
            while (quote := chunk.find(b'"', position)) >= 0:
                line += chunk.count(b"\n", position, quote)
                inside = not inside
                if inside:
                    open_line = line
                position = quote + 1
            line += chunk.count(b"\n", position)
    return InvalidInput(
        "unparseable_csv",
        f"{filename!r} cannot be parsed: line {open_line}: a quoted field opens there and is never closed",
        {"line": open_line, "reason": "unterminated quote"},
    )


def decompression_limit(compressed_bytes: int) -> tuple[int, str]:
    """The most bytes a compressed upload may expand to, and the code for crossing it.

    Both limits are checked while decompressing, so a bomb is stopped after at most this many bytes.
    """
    settings = get_settings()
    by_ratio = max(int(settings.max_compression_ratio * compressed_bytes), settings.compression_ratio_floor_bytes)
    if by_ratio < settings.max_decompressed_bytes:
        return by_ratio, "compression_ratio"
    return settings.max_decompressed_bytes, "file_too_large"


def decompression_refused(filename: str, limit: int, code: str) -> AppError:
    if code == "compression_ratio":
        ratio = get_settings().max_compression_ratio
        return TooLarge(
            "compression_ratio",
            f"{filename!r} expands to more than {limit} bytes, over {ratio:g} times its compressed size "
            "(RNNLAB_MAX_COMPRESSION_RATIO); a file that compresses this well is refused as a possible bomb",
            {"limit_bytes": limit, "max_ratio": ratio},
        )
    return TooLarge(
        "file_too_large",
        f"{filename!r} decompressed (its uncompressed size) exceeds {limit} bytes "
        "(RNNLAB_MAX_DECOMPRESSED_BYTES, and never more than RNNLAB_MAX_UPLOAD_BYTES)",
        {"limit_bytes": limit},
    )


def decompress_gzip(src: Path, dst: Path, filename: str, max_bytes: int) -> None:
    """Decompress ``src`` into ``dst``, refusing output past the size and ratio limits (a bomb) or bad text.

    ``max_bytes`` caps the output further (the caller's own limit).
    """
    limit, code = decompression_limit(src.stat().st_size)
    if max_bytes < limit:
        limit, code = max_bytes, "file_too_large"
    checker = Utf8Checker(filename)
    written = 0
    try:
        with gzip.open(src, "rb") as f, dst.open("wb") as out:
            while chunk := f.read(READ_CHUNK_BYTES):
                written += len(chunk)
                if written > limit:
                    raise decompression_refused(filename, limit, code)
                checker.feed(chunk)
                out.write(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput("invalid_gzip", f"{filename!r} is not a valid gzip file: {exc}") from exc
    checker.feed(b"", final=True)
    if written == 0:
        raise InvalidInput("empty_file", f"{filename!r} decompresses to an empty file")
    if checker.quotes % 2:
        raise _unterminated_quote(dst, filename)


def check_csv_header(path: Path, filename: str, max_columns: int) -> None:
    """Refuse a header line too long to be one, or with more than ``max_columns`` columns, before
    Arrow reads a block: its per-column cost made 100,000 columns take seconds and gigabytes.

    The header ends at the first line break of any kind: LF, CR LF, or a lone CR (classic Mac OS line
    endings, which Arrow's CSV reader also takes; the header read up to LF alone was the whole file)."""
    with path.open("rb") as f:
        head = f.read(MAX_HEADER_BYTES + 1)
    ends = [at for at in (head.find(b"\n"), head.find(b"\r")) if at >= 0]
    line = head[: min(ends) + 1] if ends else head
    if len(line) > MAX_HEADER_BYTES:
        raise InvalidInput(
            "unparseable_csv",
            f"{filename!r} cannot be parsed: line 1: the header line is longer than {MAX_HEADER_BYTES} bytes",
            {"line": 1, "reason": "header line too long"},
        )
    text = line.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return  # Arrow reports the empty file with its own words
    if csv.field_size_limit() <= MAX_HEADER_BYTES:
        # The csv module refuses a field over 128 KiB by default (an uncaught csv.Error, a 500, for a
        # long column name); a header line is at most MAX_HEADER_BYTES. The limit is process-wide and
        # only ever raised here.
        csv.field_size_limit(MAX_HEADER_BYTES + 1)
    try:
        count = len(next(csv.reader([text]), []))
    except csv.Error as exc:
        raise InvalidInput(
            "unparseable_csv",
            f"{filename!r} cannot be parsed: line 1: {exc}",
            {"line": 1, "reason": str(exc)[:MAX_ERROR_SNIPPET_CHARS]},
        ) from exc
    if count > max_columns:
        raise too_many_columns(filename, count, max_columns)


def too_many_columns(filename: str, count: int, max_columns: int) -> AppError:
    return InvalidInput(
        "too_many_columns",
        f"{filename!r} has {count} columns; the limit is {max_columns} (RNNLAB_MAX_COLUMNS)",
        {"columns": count, "limit": max_columns},
    )


# -- tables --------------------------------------------------------------------------------------


def dtype_name(dtype: pa.DataType) -> str:
    """A short, stable name for a column type: int64, float64, string, bool, timestamp, date, …"""
    if pa.types.is_dictionary(dtype):
        return dtype_name(dtype.value_type)
    if pa.types.is_floating(dtype):
        return f"float{dtype.bit_width}"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "string"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_timestamp(dtype):
        return "timestamp"
    if pa.types.is_date(dtype):
        return "date"
    if pa.types.is_time(dtype):
        return "time"
    return str(dtype)


def _column_summaries(schema: pa.Schema, missing: list[int]) -> list[dict[str, Any]]:
    return [
        {"name": f.name, "dtype": dtype_name(f.type), "missing": int(m)} for f, m in zip(schema, missing, strict=True)
    ]


# Invisible characters that make two column names look alike or display a name as something it is
# not: bidi embeddings, overrides, isolates and marks (U+202E shows text reversed), zero-width space,
# word joiner and the invisible operators, the byte-order mark (a CSV's leading one is no part of its
# header: the reader drops it), deprecated format controls and interlinear annotation. Other invisible
# formatting characters are spelling: ZWNJ and ZWJ (U+200C, U+200D: Persian words, emoji sequences
# such as a family), the soft hyphen (U+00AD), tag characters of flag emoji.
_LOOK_ALIKE_CHARACTERS = frozenset(
    [0x061C, 0x200B, 0x200E, 0x200F, 0xFEFF]
    + list(range(0x202A, 0x202F))
    + list(range(0x2060, 0x2065))
    + list(range(0x2066, 0x2070))
    + list(range(0xFFF9, 0xFFFC))
)


def look_alike_characters(name: str) -> list[str]:
    """Control characters (Cc) and the invisible ones of :data:`_LOOK_ALIKE_CHARACTERS` in a column
    name, as ``U+XXXX``. Narrower than :func:`hidden_characters` (all of Unicode's Cf, for file,
    dataset and job names): column names come from data, in every script."""
    return [f"U+{ord(ch):04X}" for ch in name if ord(ch) in _LOOK_ALIKE_CHARACTERS or unicodedata.category(ch) == "Cc"]


def _check_column_names(names: list[str], filename: str) -> None:
    if not names:
        raise InvalidInput("no_columns", f"{filename!r} has no columns")
    # Control characters, and invisible ones that hide or reorder text (U+202E shows text reversed,
    # U+200B is a zero-width space): two columns would look alike, as file, dataset and job names would.
    hidden = [(i, name, chars) for i, name in enumerate(names) if (chars := look_alike_characters(name))]
    if hidden:
        shown = "; ".join(f"column {i} {ascii(name)} ({', '.join(chars[:3])})" for i, name, chars in hidden[:5])
        raise InvalidInput(
            "invalid_column_name",
            f"{filename!r} has column names with control characters (NUL, tab, escape, …) or invisible "
            f"characters that make names look alike or reorder them (such as U+202E, U+200B or U+FEFF): "
            f"{shown}; rename those columns",
            {
                "columns": [name for _, name, _ in hidden[:20]],
                "column_indices": [i for i, _, _ in hidden[:20]],
                "characters": [chars for _, _, chars in hidden[:20]],
            },
        )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        shown = ", ".join(repr(n) for n in duplicates)
        raise InvalidInput(
            "duplicate_columns",
            f"{filename!r} has duplicate column names: {shown}; column names must be unique",
            {"duplicates": duplicates},
        )


def _no_rows(filename: str, names: list[str]) -> AppError:
    return InvalidInput(
        "no_rows",
        f"{filename!r} has a header ({', '.join(names[:20])}) but no data rows",
        {"columns": names},
    )


_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): .*CSV conversion error")


def _widened(dtype: pa.DataType) -> pa.DataType | None:
    """The next, wider type to try when a later block holds a value the inferred type cannot take."""
    if pa.types.is_null(dtype) or pa.types.is_integer(dtype):
        return pa.float64()
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return None
    return pa.string()


class _ConversionFailed(Exception):
    def __init__(self, column: str, dtype: pa.DataType, cause: pa.ArrowInvalid) -> None:
        super().__init__(str(cause))
        self.column, self.dtype, self.cause = column, dtype, cause


def convert_csv_to_parquet(src: Path, dst: Path, filename: str) -> tuple[int, list[dict[str, Any]]]:
    """Write the CSV at ``src`` as Parquet at ``dst``; returns the row count and column summaries.

    Types are inferred from the first block. If a later block holds a value that does not fit (a
    word in a column of numbers), one pass over the file as text finds the type every column needs
    (:func:`infer_column_types`) and the file is read once more with those types: at most three
    passes however many columns change (one pass per column made 500 columns take 26 s).
    """
    column_types: dict[str, pa.DataType] = {}
    try:
        return _write_parquet(src, dst, filename, column_types)
    except _ConversionFailed:
        column_types = infer_column_types(src, filename)
    while True:  # the cast and the CSV parser rarely disagree; then widen that one column
        try:
            return _write_parquet(src, dst, filename, column_types)
        except _ConversionFailed as failed:
            wider = _widened(failed.dtype)
            if wider is None:
                raise _unparseable(src, filename, failed.cause) from failed.cause
            column_types[failed.column] = wider


def infer_column_types(src: Path, filename: str) -> dict[str, pa.DataType]:
    """Each column's narrowest type (first block's guess, widened int → float → string) that fits
    every value, from one pass that reads everything as text and casts each batch."""
    try:
        first = pa_csv.open_csv(src, read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES))
        names, guessed = first.schema.names, list(first.schema.types)
        as_text = {name: pa.string() for name in names}
        reader = pa_csv.open_csv(
            src,
            read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pa_csv.ConvertOptions(column_types=as_text, strings_can_be_null=True),
        )
        types: list[pa.DataType | None] = list(guessed)
        for batch in reader:
            for i, column in enumerate(batch.columns):
                while types[i] is not None and not _casts(column, types[i]):
                    types[i] = _widened(types[i])  # type: ignore[arg-type]
    except pa.ArrowInvalid as exc:
        raise _unparseable(src, filename, exc) from exc
    return {name: dtype if dtype is not None else pa.string() for name, dtype in zip(names, types, strict=True)}


def _casts(column: pa.Array, dtype: pa.DataType) -> bool:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return True
    try:
        column.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: text. Numbers are mostly distinct, and trying a dictionary
    on each of their pages before falling back cost a third of the conversion (and made the file
    larger)."""
    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or f.type == pa.null()
    ]


def delta_encoded_columns(schema: pa.Schema) -> dict[str, str]:
    """Integer columns, written DELTA_BINARY_PACKED (Parquet's delta encoding for integers; every
    reader of Parquet 2 encodings reads it) instead of plain values. Measured per row group of 4 MiB
    with zstd, against plain: a monotonic timestamp column 4.66 → 0.78 MB and 0.117 → 0.021 s of
    CPU; random integers 12.1 → 8.0 MB and 0.113 → 0.028 s; whole tables (3M rows) 38.0 → 35.6 MB
    (sensor readings: timestamp, two floats, a device name) and 14.3 → 10.9 MB (two integer columns),
    at 15–60% less encoding CPU. Floats stay plain: byte-stream-split made rounded readings 10-16%
    larger."""
    return {f.name: "DELTA_BINARY_PACKED" for f in schema if pa.types.is_integer(f.type)}


def statistics_columns(schema: pa.Schema) -> list[str]:
    """Columns whose min/max statistics are written: all but text. A text column's min and max
    compare every value (memcmp), which cost about 4% of a CSV upload's CPU; nothing in rnnlab
    reads Parquet statistics, and numbers keep theirs (cheap, and useful to other readers)."""
    text = set(dictionary_columns(schema))
    return [f.name for f in schema if f.name not in text]


def early_csv_to_parquet(
    source: GrowingFile, spool: Path, dst: Path, filename: str, written: Callable[[int], None] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """:func:`convert_csv_to_parquet`'s first attempt, reading a CSV that is still arriving.

    The header is checked first (as the usual path does, before Arrow reads a block). Any error
    ends it; the caller then converts the complete file the usual way. ``written`` is told the size
    of ``dst`` after each row group (see :func:`_row_group_writer`).
    """
    source.wait_for(MAX_HEADER_BYTES + 1)
    check_csv_header(spool, filename, get_settings().max_columns)
    return _write_parquet(source, dst, filename, {}, written)


def first_block_types(path: Path, block_bytes: int) -> dict[str, pa.DataType]:
    """The column types Arrow's streaming CSV reader infers from its first block of ``block_bytes``
    (the complete lines in it), found by reading just that block; columns that block leaves without
    a type (no values yet) are not named. Empty when the block cannot tell (no complete line, an
    error, duplicate names): then the reader infers as usual and reports what it finds.

    Read with these types the file converts to the same table, at far less CPU: Arrow's inferring
    column decoder stays on every later block, and pinning the types it chose took the parse of a
    512 MiB, 4-column CSV from 1.8 to 1.1 s of CPU (3.3 vs 1.9 s into one table; 20 float columns:
    2.5 vs 1.8 s), where the parse is most of an upload's critical path.
    """
    with path.open("rb") as f:
        head = f.read(block_bytes)
    if len(head) == block_bytes:  # more follows: the reader's first block ends with its last line end
        end = max(head.rfind(b"\n"), head.rfind(b"\r"))
        if end < 0:
            return {}
        head = head[: end + 1]
    try:
        schema = pa_csv.open_csv(
            pa.BufferReader(head),
            read_options=pa_csv.ReadOptions(block_size=len(head) + 1, use_threads=False),
            convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
        ).schema
    except pa.ArrowInvalid:
        return {}
    if len(set(schema.names)) != len(schema.names):
        return {}
    return {f.name: f.type for f in schema if not pa.types.is_null(f.type)}


def _write_parquet(
    src: Path | GrowingFile,
    dst: Path,
    filename: str,
    column_types: dict[str, pa.DataType],
    written: Callable[[int], None] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    if isinstance(src, Path):
        path, block_bytes = src, CSV_BLOCK_BYTES
    else:
        path, block_bytes = src.path, EARLY_CSV_BLOCK_BYTES
        src.wait_for(block_bytes + 1)  # the first block is on disk (or the whole file, if shorter)
    types = {**first_block_types(path, block_bytes), **column_types}
    try:
        reader = pa_csv.open_csv(
            src,
            # One parsing thread: Arrow's parallel read ahead cost a fifth more CPU for the same
            # batches, and the Parquet encoding runs on a thread of its own (_row_group_writer).
            read_options=pa_csv.ReadOptions(block_size=block_bytes, use_threads=False),
            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True),
            memory_pool=conversion_memory_pool(),
        )
    except pa.ArrowInvalid as exc:
        raise _unparseable_at(src, filename, exc) from exc
    schema = reader.schema
    _check_column_names(schema.names, filename)
    missing = [0] * len(schema)
    floating = {i for i, kind in enumerate(schema.types) if pa.types.is_floating(kind)}
    num_rows = 0
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0
    with _row_group_writer(dst, schema, written) as write_row_group:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                match = _CONVERSION_ERROR.search(str(exc))
                if match and int(match.group(1)) < len(schema):
                    index = int(match.group(1))
                    raise _ConversionFailed(schema.names[index], schema.types[index], exc) from exc
                raise _unparseable_at(src, filename, exc) from exc
            num_rows += batch.num_rows
            for i, column in enumerate(batch.columns):
                missing[i] += column.null_count
                if i in floating:  # "NAN" is no null value to Arrow's reader but a NaN: missing too
                    missing[i] += _nan_count(column)
            pending.append(batch)
            pending_bytes += batch.nbytes
            if pending_bytes >= ROW_GROUP_BYTES:
                write_row_group(pa.Table.from_batches(pending, schema))
                pending, pending_bytes = [], 0
        if pending:
            write_row_group(pa.Table.from_batches(pending, schema))
    if num_rows == 0:
        raise _no_rows(filename, schema.names)
    return num_rows, _column_summaries(schema, missing)


@contextmanager
def _row_group_writer(dst: Path, schema: pa.Schema, written: Callable[[int], None] | None = None) -> Iterator[Any]:
    """A function that queues a table as the next row group of the Parquet file ``dst``.

    A thread of its own encodes and compresses each row group while the caller parses the next
    (both release the GIL); one table waits at most, so memory stays bounded. The file is complete
    when the block ends cleanly; an error of the writer is raised by the next call or at the end.
    ``written``, when given, is told the file's size after each row group and once it is closed:
    the bytes up to there are final (a Parquet writer only appends), so they can be sent on.
    """
    tables: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
    failed: list[BaseException] = []

    def write_all() -> None:
        try:
            with pq.ParquetWriter(
                dst,
                schema,
                compression=PARQUET_COMPRESSION,
                use_dictionary=dictionary_columns(schema),
                column_encoding=delta_encoded_columns(schema),
                write_statistics=statistics_columns(schema),
                memory_pool=conversion_memory_pool(),
            ) as writer:
                while (table := tables.get()) is not None:
                    if not failed:
                        writer.write_table(table)
                        if written is not None:
                            written(os.path.getsize(dst))
            if written is not None and not failed:
                written(os.path.getsize(dst))
        except BaseException as exc:
            failed.append(exc)
            while tables.get() is not None:  # let the producer finish putting and stop
                pass

    def write_row_group(table: pa.Table) -> None:
        if failed:
            raise failed[0]
        tables.put(table)

    thread = threading.Thread(target=write_all, name="parquet-writer", daemon=True)
    thread.start()
    try:
        yield write_row_group
    except BaseException:
        failed.append(EarlyConversionStopped())  # the file is abandoned: write no more of it
        raise
    finally:
        tables.put(None)
        thread.join()
    if failed:
        raise failed[0]


def _unparseable_at(src: Path | GrowingFile, filename: str, exc: pa.ArrowInvalid) -> Exception:
    # An early conversion gives up on any error: the usual conversion of the whole file reports it.
    return _unparseable(src, filename, exc) if isinstance(src, Path) else exc


def _unparseable(src: Path, filename: str, exc: pa.ArrowInvalid) -> AppError:
    message = str(exc)
    if "Empty CSV file" in message:
        return InvalidInput("empty_file", f"{filename!r} holds no CSV header or rows")
    details: dict[str, Any] = {"reason": message[:MAX_ERROR_SNIPPET_CHARS]}
    location = locate_bad_row(src)
    if location is not None:
        line, problem = location
        details["line"] = line
        return InvalidInput("unparseable_csv", f"{filename!r} cannot be parsed: line {line}: {problem}", details)
    return InvalidInput("unparseable_csv", f"{filename!r} cannot be parsed: {message[:300]}", details)


def locate_bad_row(path: Path) -> tuple[int, str] | None:
    """The first line (1-based) whose record has a different field count than the header, and why.

    Only on the error path: Arrow says what is wrong but not where, so the file is read again
    with the csv module, one record at a time.
    """
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            expected: int | None = None
            last_line = 0
            try:
                for row in reader:
                    start_line = last_line + 1
                    last_line = reader.line_num
                    if not row:
                        continue
                    if expected is None:
                        expected = len(row)
                    elif len(row) != expected:
                        snippet = ",".join(row)[:MAX_ERROR_SNIPPET_CHARS]
                        return start_line, f"expected {expected} fields, found {len(row)}: {snippet!r}"
            except csv.Error as exc:
                return reader.line_num, str(exc)
    finally:
        csv.field_size_limit(previous_limit)
    return None


# Rows per batch while a Parquet upload is scanned. Dictionary-encoded text is read as dictionaries
# (see dictionary_leaves), so a batch holds each distinct value once whatever it decodes to.
PARQUET_BATCH_ROWS = 16384
# Bytes per value Arrow decodes each Parquet physical type to, for a file whose Arrow schema does not
# map onto its leaf columns (BYTE_ARRAY: its offset; the text is counted from the uncompressed sizes).
_PHYSICAL_BYTES = {"BOOLEAN": 0.125, "INT32": 4, "INT64": 8, "INT96": 8, "FLOAT": 4, "DOUBLE": 8, "BYTE_ARRAY": 4}
# The footer's uncompressed page sizes are what the reader decompresses: past this many times the
# limit they are a bomb whatever the values decode to. A legitimate file's pages exceed its decoded
# size by less: int8 in plain INT32 pages is 4 times its Arrow size, a dictionary chunk that fell back
# to plain pages about 1.4 times.
_PAGES_OVER_LIMIT = 5


def inspect_parquet(path: Path, filename: str, max_bytes: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Open the Parquet file, then read every column once (validating its pages) to count missing values
    (nulls, and NaN in float columns).

    A Parquet file is compressed like a ``.csv.gz``, and as easily a bomb: a few KiB of dictionary
    pages can decode to gigabytes. Its decoded size is held to the same limits
    (:func:`decompression_limit`, and ``max_bytes``): first, against gross bombs, as the footer
    declares it (:func:`_declared_decoded_bytes`: the least the columns decode to, and pages over
    ``_PAGES_OVER_LIMIT`` times the limit), then exactly, as counted batch by batch while scanning.
    Text columns that are dictionary-encoded are read as dictionaries, so no batch expands the
    repeated values before they are counted.
    """
    limit, code = decompression_limit(path.stat().st_size)
    if max_bytes is not None and max_bytes < limit:
        limit, code = max_bytes, "file_too_large"
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            max_columns = get_settings().max_columns
            if len(schema.names) > max_columns:
                raise too_many_columns(filename, len(schema.names), max_columns)
            _check_column_names(schema.names, filename)
            metadata = parquet.metadata
            num_rows = metadata.num_rows
            if num_rows == 0:
                raise _no_rows(filename, schema.names)
            declared, pages = _declared_decoded_bytes(metadata, schema)
            if declared > limit:
                raise decompression_refused(f"{filename} (about {declared} bytes decoded)", limit, code)
            if pages > _PAGES_OVER_LIMIT * limit:
                raise decompression_refused(f"{filename} (pages of {pages} bytes uncompressed)", limit, code)
            dictionaries = dictionary_leaves(metadata)
        with pq.ParquetFile(path, read_dictionary=dictionaries or None) as parquet:
            missing = []
            decoded = 0
            for name in schema.names:
                count = 0
                floating = pa.types.is_floating(schema.field(name).type)
                for batch in parquet.iter_batches(columns=[name], batch_size=PARQUET_BATCH_ROWS):
                    column = batch.column(0)
                    decoded += decoded_bytes(column)
                    if decoded > limit:
                        raise decompression_refused(f"{filename} (its columns decoded)", limit, code)
                    count += column.null_count
                    if floating:
                        count += _nan_count(column)
                missing.append(count)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidInput("invalid_parquet", f"{filename!r} is not a readable Parquet file: {str(exc)[:300]}") from exc
    return num_rows, _column_summaries(schema, missing)


def _declared_decoded_bytes(metadata: pq.FileMetaData, schema: pa.Schema) -> tuple[int, int]:
    """What the footer says the columns decode to, at least, and the size of their uncompressed pages.

    A leaf of a fixed width decodes to its value count at the width of its Arrow type (int8 is one
    byte, though Parquet stores it as INT32; a decimal 16, though stored in a few): exact, whatever the
    pages hold. Text decodes to its uncompressed pages when they are plain (each value with its length,
    as Arrow holds it with an offset), and to at least its offsets when dictionary-encoded: a dictionary
    page and indices say little of what they expand to, and the scan counts that exactly, reading them
    as dictionaries (see :func:`dictionary_leaves`). Only a gross bomb is refused from the footer
    before any page is read; the scan that counts each decoded batch decides the rest.
    """
    widths = _leaf_widths(schema, metadata)
    total = 0.0
    pages = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            pages += chunk.total_uncompressed_size
            width = widths[c]
            if width is not None:
                total += chunk.num_values * width
            elif chunk.has_dictionary_page:
                total += chunk.num_values * 4
            else:
                total += max(chunk.total_uncompressed_size, chunk.num_values * 4)
    return int(total), pages


def _leaf_widths(schema: pa.Schema, metadata: pq.FileMetaData) -> list[float | None]:
    """Bytes per value of each Parquet leaf column as Arrow decodes it (``None``: text, of any length)."""
    kinds: list[pa.DataType] = []
    for field in schema:
        _arrow_leaves(field.type, kinds)
    if len(kinds) == metadata.num_columns:
        return [_arrow_width(kind) for kind in kinds]
    widths: list[float | None] = []  # a schema that does not map onto the leaves: their physical types
    for c in range(metadata.num_columns):
        column = metadata.schema.column(c)
        if column.physical_type == "BYTE_ARRAY":
            widths.append(None)
        else:  # FIXED_LEN_BYTE_ARRAY: the schema says how long
            widths.append(_PHYSICAL_BYTES.get(column.physical_type) or column.length or 1)
    return widths


def _arrow_leaves(kind: pa.DataType, out: list[pa.DataType]) -> None:
    """The leaf types of ``kind`` in Parquet's column order (depth first)."""
    if isinstance(kind, pa.ExtensionType):
        kind = kind.storage_type
    if pa.types.is_dictionary(kind):
        _arrow_leaves(kind.value_type, out)
    elif pa.types.is_map(kind):
        _arrow_leaves(kind.key_type, out)
        _arrow_leaves(kind.item_type, out)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        _arrow_leaves(kind.value_type, out)
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            _arrow_leaves(kind.field(i).type, out)
    else:
        out.append(kind)


def _arrow_width(kind: pa.DataType) -> float | None:
    if pa.types.is_null(kind):
        return 0.0
    try:
        return float(kind.bit_width) / 8
    except ValueError:  # text and binary: no fixed width
        return None


def dictionary_leaves(metadata: pq.FileMetaData) -> list[int]:
    """Leaf columns of text (BYTE_ARRAY) with a dictionary page in some row group: read as dictionaries."""
    leaves = []
    for c in range(metadata.num_columns):
        if metadata.schema.column(c).physical_type != "BYTE_ARRAY":
            continue
        groups = (metadata.row_group(g).column(c) for g in range(metadata.num_row_groups))
        if any(chunk.has_dictionary_page for chunk in groups):
            leaves.append(c)
    return leaves


def _nan_count(column: pa.Array) -> int:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return int(pc.sum(pc.is_nan(column)).as_py() or 0)


def decoded_bytes(array: pa.Array) -> int:
    """Arrow's size of ``array`` with every dictionary decoded: what a reader that does not keep
    dictionaries (the workers, a preview) holds in memory for it."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        if is_binary_like(values.type):
            lengths = pc.binary_length(values)
            text = pc.sum(pc.take(lengths, array.indices)).as_py() or 0
            offsets = 8 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else 4
            return int(text) + (len(array) + 1) * offsets + len(array) // 8 + 1
        per_value = decoded_bytes(values) / max(len(values), 1)
        return int(per_value * len(array)) + len(array) // 8 + 1
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = 8 if pa.types.is_large_list(kind) else 4
        return (len(array) + 1) * offsets + decoded_bytes(array.values)
    if pa.types.is_fixed_size_list(kind):
        return decoded_bytes(array.values)
    if pa.types.is_struct(kind):
        return sum(decoded_bytes(array.field(i)) for i in range(kind.num_fields)) + len(array) // 8 + 1
    return int(array.nbytes)


def is_binary_like(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


# -- arrays --------------------------------------------------------------------------------------


@dataclass
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]
    data_offset: int  # where the array's bytes start inside the member


def read_npy_header(member: Any, array: str, filename: str) -> NpyHeader:
    """Parse an ``.npy`` header from an open zip member without touching the data or unpickling."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise InvalidInput(
            "invalid_npz",
            f"array {array!r} in {filename!r} is not a valid .npy array: {exc}",
            {"array": array},
        ) from exc
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran), dtype, member.tell())


def inspect_npz(path: Path, filename: str, max_bytes: int) -> dict[str, list[int]]:
    """Array names and shapes from the member headers; refuses object arrays and non-array members.

    Every member is read through once (in chunks) so a corrupt archive fails here, by its CRC,
    rather than in a worker; arrays are never loaded and nothing is unpickled.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput("invalid_npz", f"{filename!r} is not a valid .npz (zip) archive: {exc}") from exc
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if not members:
            raise InvalidInput("no_arrays", f"{filename!r} holds no arrays")
        if len(members) > get_settings().max_columns:
            raise InvalidInput(
                "invalid_npz",
                f"{filename!r} holds {len(members)} arrays; at most {get_settings().max_columns} are read",
                {"arrays": len(members)},
            )
        declared = sum(info.file_size for info in members)
        limit, code = decompression_limit(path.stat().st_size)
        if max_bytes < limit:
            limit, code = max_bytes, "file_too_large"
        if declared > limit:
            raise decompression_refused(f"{filename} ({declared} bytes of arrays)", limit, code)
        arrays: dict[str, list[int]] = {}
        for info in members:
            check_npz_member(info, filename)
            name = info.filename[: -len(".npy")]
            if name in arrays:
                raise InvalidInput("invalid_npz", f"array {name!r} appears twice in the archive")
            try:
                with archive.open(info) as member:
                    header = read_npy_header(member, name, filename)
                    check_npy_dtype(header, name)
                    expected = math.prod(header.shape) * header.dtype.itemsize
                    actual = info.file_size - header.data_offset
                    if actual != expected:
                        raise InvalidInput(
                            "invalid_npz",
                            f"array {name!r} holds {actual} bytes but its header "
                            f"({header.dtype}, shape {list(header.shape)}) needs {expected}",
                            {"array": name},
                        )
                    while member.read(READ_CHUNK_BYTES):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as exc:
                # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile lacks.
                raise InvalidInput("invalid_npz", f"array {name!r} is corrupt: {exc}", {"array": name}) from exc
            arrays[name] = list(header.shape)
    return arrays


# np.savez stores, np.savez_compressed deflates; nothing else is an .npz numpy writes.
NPZ_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def check_npz_member(info: zipfile.ZipInfo, filename: str) -> None:
    """Refuse members numpy never writes: not ``.npy``, encrypted, oddly compressed or named like a path."""
    member = info.filename
    if not member.endswith(".npy"):
        raise InvalidInput(
            "invalid_npz",
            f"member {member!r} is not an .npy array; an .npz holds only arrays (np.savez / np.savez_compressed)",
            {"member": member},
        )
    name = member[: -len(".npy")]
    if not name or "/" in member or "\\" in member or ".." in member or hidden_characters(member):
        raise InvalidInput(
            "invalid_npz",
            f"member {member!r} of {filename!r} is named like a path or holds control characters; "
            "array names are plain names",
            {"member": member},
        )
    if info.flag_bits & 0x1:
        raise InvalidInput("invalid_npz", f"array {name!r} is encrypted; upload it unencrypted", {"array": name})
    if info.compress_type not in NPZ_COMPRESSIONS:
        raise InvalidInput(
            "invalid_npz",
            f"array {name!r} uses zip compression method {info.compress_type}; "
            "an .npz is stored or deflated (np.savez, np.savez_compressed)",
            {"array": name, "compression": info.compress_type},
        )


def check_npy_dtype(header: NpyHeader, name: str) -> None:
    """Refuse pickled (object) dtypes and empty dtypes such as ``|S0`` (nothing to read or show)."""
    check_array_dtype(header.dtype, name)


def check_array_dtype(dtype: np.dtype[Any], name: str) -> None:
    """:func:`check_npy_dtype` for an array's dtype (also for datasets stored before the check)."""
    if dtype.hasobject:
        raise InvalidInput(
            "object_array",
            f"array {name!r} has an object dtype ({dtype}), which needs pickle; "
            "pickled data is refused. Save it with a numeric, bool or string dtype",
            {"array": name, "dtype": str(dtype)},
        )
    if dtype.itemsize == 0 or dtype.fields is not None:
        raise InvalidInput(
            "invalid_npz",
            f"array {name!r} has dtype {dtype}, which holds no numbers; use a numeric, bool or string dtype",
            {"array": name, "dtype": str(dtype)},
        )
