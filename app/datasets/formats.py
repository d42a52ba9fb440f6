"""Which uploads are datasets: filename rules, and formats told apart by extension and content."""

from __future__ import annotations

from typing import Literal

from app.errors import AppError, InvalidInput, UnsupportedFormat
from worker.engine.spec import hidden_characters

DatasetFormat = Literal["csv", "csv.gz", "parquet", "npz"]

# Longest suffix first, so "data.csv.gz" is csv.gz and not an unknown ".gz".
EXTENSIONS: dict[str, DatasetFormat] = {
    ".csv.gz": "csv.gz",
    ".csv": "csv",
    ".parquet": "parquet",
    ".npz": "npz",
}
ACCEPTED = ", ".join(EXTENSIONS)

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
SNIFF_BYTES = 4096
MAX_FILENAME_CHARS = 255


def validate_filename(filename: str) -> str:
    """The upload's filename, refused when it could be mistaken for a path.

    It is only ever shown back to the user (storage keys are content-derived), but a name with
    separators or ``..`` is a sign of a confused or hostile client, so it is refused rather than cleaned.
    """
    if not filename.strip():
        raise InvalidInput("invalid_filename", "the 'file' part has an empty filename; send e.g. filename=\"data.csv\"")
    bad = [ch for ch in ("/", "\\", "\x00") if ch in filename]
    if bad or ".." in filename or hidden_characters(filename):
        raise InvalidInput(
            "invalid_filename",
            f"filename {filename!r} must be a plain file name without path separators, '..', control "
            "or invisible formatting characters (such as U+202E, which displays text reversed)",
            {"filename": filename, "characters": hidden_characters(filename)},
        )
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidInput(
            "invalid_filename",
            f"filename is {len(filename)} characters long; the limit is {MAX_FILENAME_CHARS}",
        )
    return filename


def format_from_filename(filename: str) -> DatasetFormat:
    """The format its extension claims; 415 when the extension is not one we accept."""
    lowered = filename.lower()
    for suffix, fmt in EXTENSIONS.items():
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return fmt
    raise UnsupportedFormat(
        "unsupported_format",
        f"{filename!r} is not a supported dataset format; accepted formats: {ACCEPTED}",
        {"filename": filename, "accepted": list(EXTENSIONS)},
    )


def stem(filename: str) -> str:
    """The filename without its dataset extension: the default dataset name."""
    lowered = filename.lower()
    for suffix in EXTENSIONS:
        if lowered.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def sniff_format(head: bytes) -> DatasetFormat | None:
    """The format the first bytes reveal; ``None`` for text without a binary signature (CSV)."""
    if head.startswith(GZIP_MAGIC):
        return "csv.gz"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ZIP_MAGICS):
        return "npz"
    return None


def check_content_matches(filename: str, claimed: DatasetFormat, head: bytes) -> None:
    """Refuse content that is not what its extension says (415), e.g. a zip renamed to ``.csv``."""
    sniffed = sniff_format(head)
    if claimed == "csv":
        if sniffed is not None:
            raise _mismatch(filename, claimed, f"{sniffed} data")
        wide = _wide_text_encoding(head)
        if wide is not None:
            raise InvalidInput(
                "invalid_encoding",
                f"{filename!r} is {wide} text, not UTF-8; save the file as UTF-8 (in Excel: 'CSV UTF-8')",
                {"filename": filename, "encoding": wide},
            )
        if b"\x00" in head and not _text_with_nuls(head):
            raise _mismatch(filename, claimed, "binary data")
    elif sniffed != claimed:
        raise _mismatch(filename, claimed, f"{sniffed} data" if sniffed else "something else")


def _text_with_nuls(head: bytes) -> bool:
    """UTF-8 text with a few NUL characters in it (a text file, refused later with the NUL's line and
    offset as ``nul_character``), rather than binary content named ``.csv``."""
    rest = head.replace(b"\x00", b"")
    if head.count(0) * 100 > len(head):
        return False
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(rest) - 4:  # only a character cut at the end of the sample is forgiven
            return False
        text = rest[: exc.start].decode("utf-8")
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f")
    return controls * 100 <= len(text)


def _wide_text_encoding(head: bytes) -> str | None:
    """``UTF-16`` / ``UTF-32`` when the first bytes are such text (a byte-order mark, or ASCII with a
    NUL after every character, as Windows' "Unicode text" exports write it); None otherwise."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    sample = head[:512]
    if len(sample) >= 8 and sample.count(0) * 2 >= len(sample) - 1:
        odd, even = sample[1::2], sample[0::2]
        if odd.count(0) == len(odd) or even.count(0) == len(even):
            return "UTF-16"
    return None


def _mismatch(filename: str, claimed: DatasetFormat, found: str) -> AppError:
    return UnsupportedFormat(
        "unsupported_format",
        f"{filename!r} is named like {claimed} but its content looks like {found}; accepted formats: {ACCEPTED}",
        {"filename": filename, "claimed": claimed, "accepted": list(EXTENSIONS)},
    )
