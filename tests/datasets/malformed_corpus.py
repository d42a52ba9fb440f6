"""A corpus of malformed uploads, each built in memory: (label, filename, content, name field).

Every case is something a confused or hostile client could send; each must be refused with a 4xx in
the one error body and leave no file and no row behind. The corpus test runs them with small
limits (see ``CORPUS_SETTINGS``) so the size-limit cases stay small.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.datasets.conftest import csv_bytes, npz_bytes, parquet_bytes

CORPUS_SETTINGS = {
    "max_columns": "50",
    "max_compression_ratio": "20",
    "compression_ratio_floor_bytes": "200000",
    "max_upload_bytes": str(4 * 1024 * 1024),
}


@dataclass(frozen=True)
class Case:
    label: str
    filename: str
    content: bytes
    name: str | None = None


GOOD_CSV = csv_bytes(["a,b"] + [f"{i},{i * 2}" for i in range(20)])


def _npy(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    sink = io.BytesIO()
    np.lib.format.write_array_header_1_0(sink, {"descr": descr, "fortran_order": False, "shape": shape})
    return sink.getvalue() + data


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return sink.getvalue()


def _patch_zip(content: bytes, *, flag: int | None = None, method: int | None = None) -> bytes:
    """Rewrite the general-purpose flag or the compression method in every local and central header."""
    data = bytearray(content)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            if flag is not None:
                data[at + flag_at : at + flag_at + 2] = struct.pack("<H", flag)
            if method is not None:
                data[at + method_at : at + method_at + 2] = struct.pack("<H", method)
            start = at + 4
    return bytes(data)


def _repeated_text_parquet(rows: int, chars: int) -> bytes:
    """``rows`` copies of one dictionary-encoded ``chars``-long string: a few KiB that decode to much more."""
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["a" * chars]))
    sink = io.BytesIO()
    pq.write_table(pa.table({"s": text}), sink, compression="zstd", store_schema=False)
    return sink.getvalue()


def _zstd_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _good_npz() -> bytes:
    return npz_bytes(X=np.zeros((4, 3, 1)), y=np.arange(4.0))


def _csv_cases() -> Iterator[Case]:
    filler = "".join(f"{i},{i}\n" for i in range(1000)).encode()  # past the 4 KiB the head check sees
    yield Case("nul after 4 KiB", "late-nul.csv", b"a,b\n" + filler + b"1,\x002\n")
    yield Case("nul in a value", "nul-value.csv", b"a,b\n1,x\x00y\n")
    yield Case("nul in a column name", "nul-col.csv", b"va\x00l,b\n1,2\n")
    for line in (2, 5, 50, 500):
        rows = [f"{i},{i}" for i in range(600)]
        rows[line - 2] = "1,2,3"
        yield Case(f"ragged row at line {line}", f"ragged{line}.csv", csv_bytes(["a,b", *rows]))
    yield Case("too few fields", "short.csv", csv_bytes(["a,b,c", "1,2,3", "4,5"]))
    yield Case("unterminated quote", "quote.csv", b'a,b\n1,"never closed\n2,3\n')
    yield Case("unterminated quote at the end", "quote-end.csv", b'a,b\n1,2\n3,"4\n')
    yield Case("unterminated quote in the header", "quote-head.csv", b'"a,b\n1,2\n')
    yield Case("invalid utf-8", "latin1.csv", "a,b\n1,caf\u00e9\n".encode("latin-1"))
    yield Case("invalid utf-8 late", "late-latin1.csv", b"a,b\n" + filler + "1,\u00e9\n".encode("latin-1"))
    yield Case("truncated utf-8 sequence", "cut-utf8.csv", b"a,b\n1,\xe2\x82\n")
    yield Case("header only", "header.csv", b"a,b,c\n")
    yield Case("header only, no newline", "header-nonl.csv", b"a,b,c")
    yield Case("blank lines only", "blank.csv", b"\n\n\n")
    yield Case("a lone quote", "lone-quote.csv", b'"')
    yield Case("duplicate columns", "dup.csv", csv_bytes(["a,a", "1,2"]))
    yield Case("duplicate columns among many", "dup2.csv", csv_bytes(["a,b,c,b", "1,2,3,4"]))
    yield Case("too many columns", "wide.csv", csv_bytes([",".join(f"c{i}" for i in range(60)), ",".join("1" * 60)]))
    yield Case("header line too long", "long-header.csv", b"a" * 700_000 + b",b\n1,2\n")
    yield Case("BOM only", "bom.csv", b"\xef\xbb\xbf")
    yield Case("binary garbage", "garbage.csv", bytes(range(256)) * 4)
    yield Case("a zip named .csv", "zip.csv", _good_npz())
    yield Case("a gzip named .csv", "gz.csv", gzip.compress(GOOD_CSV))
    yield Case("a parquet named .csv", "pq.csv", parquet_bytes(pa.table({"a": [1, 2]})))
    yield Case("a PNG named .csv", "image.csv", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    yield Case("utf-16 text", "utf16.csv", "a,b\n1,2\n".encode("utf-16"))
    yield Case("column name with U+202E", "bidi-col.csv", "a\u202e,b\n1,2\n".encode())
    yield Case("column names alike but for U+200B", "zw-col.csv", "a\u200b,a\n1,2\n".encode())
    yield Case("column name with a bidi isolate U+2067", "isolate-col.csv", "b,\u2067a\n1,2\n".encode())
    yield Case("column name with a word joiner U+2060", "wj-col.csv", "a\u2060,a\n1,2\n".encode())
    yield Case("CR-only line endings, ragged", "cr-ragged.csv", b"a,b\r1,2\r3\r4,5\r")


def _gzip_cases() -> Iterator[Case]:
    filler = "".join(f"{i},{i}\n" for i in range(1000)).encode()
    yield Case("gz: nul inside", "nul.csv.gz", gzip.compress(b"a,b\n" + filler + b"1,\x002\n"))
    yield Case("gz: nul in a column name", "nulcol.csv.gz", gzip.compress(b"va\x00l,b\n1,2\n"))
    yield Case("gz: truncated", "cut.csv.gz", gzip.compress(GOOD_CSV * 50)[:-30])
    yield Case("gz: only the magic", "magic.csv.gz", b"\x1f\x8b")
    yield Case("gz: bad header", "badhdr.csv.gz", b"\x1f\x8b\x08\xff" + b"\x00" * 40)
    yield Case("gz: ragged", "ragged.csv.gz", gzip.compress(csv_bytes(["a,b", "1,2", "3"])))
    yield Case("gz: invalid utf-8", "latin1.csv.gz", gzip.compress("a\ncaf\u00e9\n".encode("latin-1")))
    yield Case("gz: unterminated quote", "quote.csv.gz", gzip.compress(b'a,b\n1,"open\n'))
    yield Case("gz: empty content", "empty.csv.gz", gzip.compress(b""))
    yield Case("gz: header only", "header.csv.gz", gzip.compress(b"a,b\n"))
    yield Case("gz: ratio bomb", "bomb.csv.gz", gzip.compress(b"a\n" + b"0\n" * 2_000_000))
    yield Case("gz: gzip of gzip", "double.csv.gz", gzip.compress(gzip.compress(GOOD_CSV)))
    yield Case("gz: a zip inside", "zip.csv.gz", gzip.compress(_good_npz()))
    yield Case("gz: too many columns", "wide.csv.gz", gzip.compress(csv_bytes([",".join(f"c{i}" for i in range(60))])))
    yield Case("gz: plain text named .csv.gz", "plain.csv.gz", GOOD_CSV)
    yield Case("gz: trailing garbage", "trail.csv.gz", gzip.compress(GOOD_CSV) + b"garbage!")


def _parquet_cases() -> Iterator[Case]:
    good = parquet_bytes(pa.table({"a": [1, 2, 3], "b": [1.0, 2.0, 3.0]}))
    yield Case("parquet: truncated", "cut.parquet", good[: len(good) // 2])
    yield Case("parquet: magic only", "magic.parquet", b"PAR1")
    yield Case("parquet: magic twice", "magic2.parquet", b"PAR1PAR1")
    yield Case("parquet: garbage after the magic", "garbage.parquet", b"PAR1" + bytes(range(200)) + b"PAR1")
    yield Case("parquet: footer length lies", "footer.parquet", good[:-8] + struct.pack("<I", 10**9) + b"PAR1")
    yield Case("parquet: no rows", "norows.parquet", parquet_bytes(pa.table({"a": pa.array([], pa.int64())})))
    yield Case("parquet: too many columns", "wide.parquet", parquet_bytes(pa.table({f"c{i}": [1] for i in range(60)})))
    yield Case("parquet: csv inside", "csv.parquet", GOOD_CSV)
    corrupt = bytearray(good)
    corrupt[10:40] = b"\xff" * 30
    yield Case("parquet: corrupt pages", "pages.parquet", bytes(corrupt))
    yield Case("parquet: ratio bomb of repeated text", "bigstr.parquet", _repeated_text_parquet(400, 32 * 1024))
    yield Case("parquet: ratio bomb of zeros", "zeros.parquet", parquet_bytes(pa.table({"a": np.zeros(100_000)})))
    yield Case("parquet: column name with U+202E", "bidi.parquet", parquet_bytes(pa.table({"a\u202e": [1.0]})))
    yield Case("parquet: column name with U+200B", "zw.parquet", parquet_bytes(pa.table({"a\u200b": [1], "a": [2]})))
    yield Case("parquet: column name with U+FEFF inside", "bom.parquet", parquet_bytes(pa.table({"a\ufeffb": [1]})))
    long_text = pa.table({"s": ["t" * 2000 + str(i) for i in range(2000)]})  # past the dictionary: plain pages
    yield Case("parquet: 4 MB of pages in a few KB", "pages.parquet", _zstd_parquet(long_text))


def _npz_cases() -> Iterator[Case]:
    stored = npz_bytes(X=np.zeros((4, 3)), y=np.arange(4.0))
    deflated = npz_bytes(compressed=True, X=np.zeros((4, 3)), y=np.arange(4.0))
    x_npy = _npy("<f8", (2,), np.zeros(2).tobytes())
    yield Case("npz: encrypted flag", "encrypted.npz", _patch_zip(stored, flag=0x1))
    yield Case("npz: encrypted and deflated", "encrypted2.npz", _patch_zip(deflated, flag=0x1))
    for method in (9, 12, 14, 95, 99):  # deflate64, bzip2, lzma, xz, AES: numpy writes none of them
        yield Case(f"npz: compression method {method}", f"method{method}.npz", _patch_zip(stored, method=method))
    yield Case("npz: |S0 dtype", "s0.npz", _zip({"X.npy": _npy("|S0", (3,), b""), "y.npy": x_npy}))
    yield Case("npz: |V0 dtype", "v0.npz", _zip({"X.npy": _npy("|V0", (3,), b"")}))
    yield Case("npz: structured dtype", "struct.npz", _zip({"X.npy": _npy("[('a', '<f8')]", (1,), b"\x00" * 8)}))
    yield Case("npz: object dtype", "object.npz", _zip({"X.npy": _npy("|O", (1,), b"\x00" * 8)}))
    yield Case("npz: member ../../evil.npy", "evil.npz", _zip({"../../evil.npy": x_npy}))
    yield Case("npz: member in a folder", "folder.npz", _zip({"a/X.npy": x_npy}))
    yield Case("npz: absolute member", "abs.npz", _zip({"/X.npy": x_npy}))
    yield Case("npz: member with U+202E", "bidi.npz", _zip({"X\u202eypn.npy": x_npy}))
    yield Case("npz: member with a control character", "ctrl.npz", _zip({"X\x07.npy": x_npy}))
    yield Case("npz: member named .npy", "noname.npz", _zip({".npy": x_npy}))
    yield Case("npz: a text member", "text.npz", _zip({"X.npy": x_npy, "readme.txt": b"hello"}))
    yield Case("npz: a pickle member", "pickle.npz", _zip({"model.pkl": b"\x80\x04K\x01."}))
    yield Case("npz: bad npy magic", "magic.npz", _zip({"X.npy": b"NOTNUMPY" + b"\x00" * 100}))
    yield Case("npz: npy version 9", "version.npz", _zip({"X.npy": b"\x93NUMPY\x09\x00" + b"\x00" * 100}))
    yield Case("npz: header shape lies", "shape.npz", _zip({"X.npy": _npy("<f8", (100,), np.zeros(2).tobytes())}))
    yield Case("npz: negative shape", "negative.npz", _zip({"X.npy": _npy("<f8", (-1,), b"")}))
    yield Case("npz: truncated", "cut.npz", stored[: len(stored) // 2])
    yield Case("npz: empty archive", "empty.npz", _zip({}))
    yield Case("npz: zip magic only", "magic-only.npz", b"PK\x03\x04")
    corrupt = bytearray(stored)
    corrupt[len(corrupt) // 3] ^= 0xFF  # a flipped byte inside the first member's data: its CRC fails
    yield Case("npz: bad CRC", "crc.npz", bytes(corrupt))
    yield Case("npz: ratio bomb", "bomb.npz", npz_bytes(compressed=True, X=np.zeros(1_000_000)))
    yield Case("npz: too many arrays", "many.npz", _zip({f"a{i}.npy": x_npy for i in range(60)}))
    yield Case("npz: a gzip named .npz", "gz.npz", gzip.compress(GOOD_CSV))
    yield Case("npz: csv named .npz", "csv.npz", GOOD_CSV)


def _envelope_cases() -> Iterator[Case]:
    for ext in (".csv", ".csv.gz", ".parquet", ".npz"):
        yield Case(f"empty {ext}", f"empty{ext}", b"")
    for filename in ("data.txt", "data.json", "data.csv.bz2", "data", ".csv", "data.xlsx", "data.npy", "data.zip"):
        yield Case(f"extension of {filename!r}", filename, GOOD_CSV)
    for filename in ("../x.csv", "a/b.csv", "a\\b.csv", "x\u202evsc.csv", "x\x07.csv", "x\u200b.csv", "x\x00.csv"):
        yield Case(f"filename {filename!r}", filename, GOOD_CSV)
    yield Case("filename of 300 characters", "x" * 296 + ".csv", GOOD_CSV)
    for name in ("a\x00b", "evil\u202etxt.exe", "bell\x07", "x" * 400):
        yield Case(f"name field {name[:12]!r}", "ok.csv", GOOD_CSV, name=name)


def malformed_uploads() -> list[Case]:
    return [*_envelope_cases(), *_csv_cases(), *_gzip_cases(), *_parquet_cases(), *_npz_cases()]
