"""Receiving a multipart upload as a stream: the ``file`` part goes to a temporary file, hashed as it arrives.

Starlette's own form parsing spools the whole body before the route runs and has no size limit, so
the body is parsed here, chunk by chunk, with ``python_multipart``: the size limit stops an upload
the moment it is crossed, and memory holds one chunk at a time whatever the file size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.datasets.early_conversion import EarlyConversion
from app.datasets.formats import (
    SNIFF_BYTES,
    DatasetFormat,
    check_content_matches,
    format_from_filename,
    hidden_characters,
    validate_filename,
)
from app.datasets.inspection import TextCheck
from app.errors import AppError, BadRequest, InvalidInput, TooLarge, UnsupportedFormat
from app.storage import Storage

FILE_FIELD = "file"
NAME_FIELD = "name"
MAX_NAME_CHARS = 300
# Room for the boundaries, part headers and the small `name` field around the file itself.
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
MAX_TEXT_FIELD_BYTES = 4096
# Gathered body chunks (RNNLAB_UPLOAD_CHUNK_BYTES each) waiting for the worker thread, beyond the one
# it is writing: enough to keep receiving while it works, few enough to bound memory.
SINK_QUEUE_CHUNKS = 2


@dataclass
class ReceivedUpload:
    """The ``file`` part, written to a temporary file in storage; the caller owns (and deletes) it."""

    path: Path
    filename: str
    format: DatasetFormat
    name: str | None
    size_bytes: int
    sha256: str
    early: EarlyConversion | None = None  # a CSV's conversion to Parquet, started while it arrived
    text: TextCheck | None = None  # a CSV's UTF-8 checks, made while it arrived

    def discard_early(self) -> None:
        if self.early is not None:
            self.early.discard()


def too_large(limit_bytes: int, what: str = "the file") -> AppError:
    return TooLarge(
        "file_too_large",
        f"{what} exceeds the upload limit of {limit_bytes} bytes (RNNLAB_MAX_UPLOAD_BYTES)",
        {"limit_bytes": limit_bytes},
    )


def _field_error(field: str, message: str) -> InvalidInput:
    """A form field that breaks a rule: a validation_error listing it, as schema errors do."""
    details = [{"field": field, "message": message, "type": "validation_error"}]
    return InvalidInput("validation_error", f"{field}: {message}", details)


def _decode_param(raw: bytes) -> str:
    # Browsers and curl send UTF-8 names; parse_options_header hands back the raw bytes as latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class MultipartUploadSink:
    """Synchronous multipart parser callbacks: feed raw body bytes with :meth:`write`, then :meth:`finish`.

    Any error leaves nothing behind: the temporary file is removed by :meth:`discard`, which the
    caller runs on every failure path.
    """

    def __init__(self, boundary: bytes, storage: Storage, max_file_bytes: int) -> None:
        self._storage = storage
        self._max_file_bytes = max_file_bytes
        self._max_body_bytes = max_file_bytes + MULTIPART_OVERHEAD_BYTES
        self._body_bytes = 0
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: str | None = None  # "file", "name" or None for parts we ignore
        self._ended = False

        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._filename: str | None = None
        self._format: DatasetFormat | None = None
        self._sha = hashlib.sha256()
        self._size = 0
        self._head = bytearray()
        self._head_checked = False
        self._name = bytearray()
        self._name_seen = False
        self._early: EarlyConversion | None = None
        self._text: TextCheck | None = None

    # -- feeding -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.write_pieces([data])

    def write_pieces(self, pieces: list[bytes]) -> None:
        """Feed consecutive pieces of the body (as received: parsed one by one, never joined)."""
        for data in pieces:
            self._body_bytes += len(data)
            if self._body_bytes > self._max_body_bytes:
                raise too_large(self._max_file_bytes, "the request body")
            try:
                self._parser.write(data)
            except MultipartParseError as exc:
                raise BadRequest("invalid_multipart", f"malformed multipart/form-data body: {exc}") from exc
        if self._early is not None and self._file is not None:
            self._file.flush()
            self._early.grew(self._size)

    @property
    def file_begun(self) -> bool:
        """Whether the ``file`` part's headers were read (and its name and format accepted)."""
        return self._path is not None

    def finish(self) -> ReceivedUpload:
        """Check the body was complete and return the upload (still a temporary file)."""
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise BadRequest("invalid_multipart", f"malformed multipart/form-data body: {exc}") from exc
        if self._path is None or self._filename is None or self._format is None:
            raise InvalidInput(
                "validation_error",
                "file: field required; send the dataset as the multipart form field 'file'",
                [{"field": FILE_FIELD, "message": "Field required", "type": "missing"}],
            )
        if not self._ended:
            raise BadRequest(
                "invalid_multipart",
                "the multipart body ended before its closing boundary; upload truncated",
            )
        if self._size == 0:
            raise InvalidInput("empty_file", f"{self._filename!r} is empty (0 bytes)")
        name = self._name.decode("utf-8", errors="replace").strip() if self._name_seen else ""
        if len(name) > MAX_NAME_CHARS:
            raise _field_error(NAME_FIELD, f"at most {MAX_NAME_CHARS} characters")
        check_dataset_name(name)
        return ReceivedUpload(
            path=self._path,
            filename=self._filename,
            format=self._format,
            name=name or None,
            size_bytes=self._size,
            sha256=self._sha.hexdigest(),
            early=self._early,
            text=self._text,
        )

    def discard(self) -> None:
        if self._early is not None:
            self._early.discard()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    # -- parser callbacks ----------------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        field = _decode_param(options.get(b"name", b""))
        if field == FILE_FIELD:
            self._begin_file(options.get(b"filename"))
        elif field == NAME_FIELD:
            if self._name_seen:
                raise _field_error(NAME_FIELD, "send the 'name' field once")
            self._name_seen = True
            self._part = NAME_FIELD
        else:
            self._part = None  # unknown fields are read past and ignored

    def _begin_file(self, raw_filename: bytes | None) -> None:
        if self._path is not None:
            raise _field_error(FILE_FIELD, "send exactly one 'file' part per upload")
        if raw_filename is None:
            raise InvalidInput(
                "invalid_filename",
                "the 'file' part has no filename; the extension tells the format (e.g. data.csv)",
            )
        filename = validate_filename(_decode_param(raw_filename))
        fmt = format_from_filename(filename)  # unknown extensions are refused before any byte is stored
        self._filename, self._format = filename, fmt
        self._path = self._storage.temp_path(suffix=".upload")
        self._file = self._path.open("wb")
        self._part = FILE_FIELD
        if fmt == "csv":
            self._early = EarlyConversion(self._path, self._storage.temp_path(suffix=".parquet"), filename)
            self._text = TextCheck(filename)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            assert self._file is not None
            # The parser hands over the whole buffer while inside the file: no copy then.
            chunk = data if start == 0 and end == len(data) else data[start:end]
            self._size += len(chunk)
            if self._size > self._max_file_bytes:
                raise too_large(self._max_file_bytes)
            self._sha.update(chunk)
            self._file.write(chunk)
            if self._text is not None:
                self._text.feed(chunk)
            if not self._head_checked:
                self._head += chunk[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES:
                    self._check_head()
        elif self._part == NAME_FIELD:
            self._name += data[start:end]
            if len(self._name) > MAX_TEXT_FIELD_BYTES:
                raise _field_error(NAME_FIELD, f"at most {MAX_NAME_CHARS} characters")

    def _on_part_end(self) -> None:
        if self._part == FILE_FIELD and self._file is not None:
            self._file.close()
            self._file = None
            if self._early is not None:
                self._early.grew(self._size)
            if self._text is not None:
                self._text.feed(b"", final=True)
            if not self._head_checked and self._size:
                self._check_head()
        self._part = None

    def _on_end(self) -> None:
        self._ended = True

    def _check_head(self) -> None:
        # A renamed zip or gzip is refused as soon as its first bytes arrive, not after the whole upload.
        assert self._filename is not None and self._format is not None
        check_content_matches(self._filename, self._format, bytes(self._head))
        self._head_checked = True


def check_dataset_name(name: str) -> None:
    """400 for a NUL character (the database refuses it), 422 for other hidden characters."""
    if "\x00" in name:
        raise BadRequest(
            "invalid_characters",
            "name: contains a NUL character, which no name may hold",
            [{"field": NAME_FIELD, "message": "contains a NUL character", "type": "nul"}],
        )
    hidden = hidden_characters(name)
    if hidden:
        raise InvalidInput(
            "invalid_name",
            f"name: holds control or invisible formatting characters ({', '.join(hidden[:5])})",
            [{"field": NAME_FIELD, "message": "control or formatting characters", "type": "invalid_name"}],
        )


def multipart_boundary(request: Request, max_file_bytes: int) -> bytes:
    """The body's multipart boundary, after refusing what is not a multipart upload or is too large."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise UnsupportedFormat(
            "unsupported_media_type",
            f"send the dataset as multipart/form-data with a 'file' field (Content-Type was {shown})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("invalid_multipart", "the multipart/form-data Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise BadRequest(
            "invalid_multipart",
            f"the multipart boundary is {len(boundary)} characters long; at most {MAX_BOUNDARY_LENGTH} are "
            "accepted (RFC 2046 allows 70)",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + MULTIPART_OVERHEAD_BYTES:
        # Refused from the headers alone, before a single byte of the body is read.
        raise too_large(max_file_bytes, f"the request body ({declared} bytes)")
    return boundary


async def receive_upload(request: Request, storage: Storage, max_file_bytes: int, chunk_bytes: int) -> ReceivedUpload:
    """Stream the request body into a temporary file in storage; the caller must delete ``path``.

    Body chunks are gathered to ``chunk_bytes`` and handed to a worker thread, which parses,
    hashes and writes them, so the event loop never blocks on disk I/O. The next chunks are
    received meanwhile, up to ``SINK_QUEUE_CHUNKS`` of them: receiving and writing overlap, and
    memory stays bounded.
    """
    sink = MultipartUploadSink(multipart_boundary(request, max_file_bytes), storage, max_file_bytes)
    try:
        await _feed_sink(request, sink, chunk_bytes)
        return await anyio.to_thread.run_sync(sink.finish)
    except ClientDisconnect as exc:
        sink.discard()
        raise BadRequest("upload_interrupted", "the client disconnected before the upload finished") from exc
    except BaseException:
        sink.discard()
        raise


async def _feed_sink(request: Request, sink: MultipartUploadSink, chunk_bytes: int) -> None:
    send, receive = anyio.create_memory_object_stream[list[bytes]](max_buffer_size=SINK_QUEUE_CHUNKS)

    async def write_all() -> None:
        async with receive:
            async for pieces in receive:
                # Not abandoned on cancellation: discard() runs only once the thread let go of the sink.
                await anyio.to_thread.run_sync(sink.write_pieces, pieces)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(write_all)
            async with send:
                pending: list[bytes] = []
                pending_bytes = 0
                async for chunk in request.stream():
                    if not chunk:
                        continue
                    pending.append(chunk)  # handed over as received pieces: no copy to join them
                    pending_bytes += len(chunk)
                    if pending_bytes >= chunk_bytes:
                        if sink.file_begun:
                            await send.send(pending)
                        else:  # the file's name and format are checked before more of the body is read
                            await anyio.to_thread.run_sync(sink.write_pieces, pending)
                        pending, pending_bytes = [], 0
                if pending:
                    await send.send(pending)
    except BaseExceptionGroup as grouped:
        raise _cause(grouped) from None


def _cause(grouped: BaseExceptionGroup) -> BaseException:
    """The error to answer with from a failed receive: the sink's (a 4xx) before the receiver's, and
    never the closed stream or the cancellation that the first failure caused in the other task."""
    found: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        elif not isinstance(error, (anyio.BrokenResourceError, anyio.ClosedResourceError)):
            found.append(error)

    walk(grouped)
    cancelled = anyio.get_cancelled_exc_class()
    for kinds in ((AppError,), (ClientDisconnect,), (Exception,), (BaseException,)):
        for error in found:
            if isinstance(error, kinds) and not isinstance(error, cancelled):
                return error
    return found[0] if found else grouped
