"""Converting a CSV upload to Parquet while it is still arriving.

The upload is spooled to a local file as it streams in (hashed on the way). Converting only after
the last byte arrived made the upload take receive time + conversion time; here a thread converts
the spool file as it grows, so the two overlap and the conversion is nearly done when the body
ends.

The early result is only a head start, never a different answer: once the upload is complete, the
usual checks run on the whole file (UTF-8, header, quotes), and the early Parquet is used only if
they pass and the early conversion succeeded with the types the first block suggested. On any
failure of the early conversion (a later block needs a wider type, a parse error, a too-wide
header) it is discarded and the file is converted the usual way, which reports errors with their
usual codes and messages.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)


JEMALLOC_DECAY_MS = 1000


@functools.cache
def conversion_memory_pool() -> pa.MemoryPool:
    """The Arrow allocator of CSV reading and Parquet writing: jemalloc, returning freed pages after 1 s.

    Arrow's default (mimalloc) keeps what a conversion freed, on huge pages, per thread: with it the
    API's peak RSS during a 512 MiB upload was 260 MiB against 221 MiB with jemalloc, at the same CPU
    time within the noise (4 MiB row groups). The system allocator did worse (294 MiB, 8 MiB row
    groups). Builds of pyarrow without jemalloc get the default pool.

    The decay: with 0 every freed block went back to the OS at once, so each CSV block read and
    each batch parsed could be faulted in and zeroed anew (2-13% of the parsing thread's perf
    samples were in the kernel, mostly page faults; 1% with 1 s): 1 s keeps the pages a conversion
    frees and reuses at once.
    That costs peak RSS, which the early conversion's smaller CSV blocks pay for (see
    ``EARLY_CSV_BLOCK_BYTES`` in app.datasets.inspection).
    """
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()
    pa.jemalloc_set_decay_ms(JEMALLOC_DECAY_MS)
    return pool


class GrowingFile(io.RawIOBase):
    """A reader of a file another thread is still appending to: reads wait for more bytes until
    :meth:`finish` says the writer is done (then EOF) or :meth:`abort` stops it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = path.open("rb")
        self._written = 0
        self._finished = False
        self._aborted = False
        self._changed = threading.Condition()

    # -- the writer's side ------------------------------------------------------------------------
    def grew(self, size: int) -> None:
        with self._changed:
            self._written = size
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def abort(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()

    def wait_for(self, size: int) -> int:
        """Block until at least ``size`` bytes were written (or the file is complete); returns how many."""
        with self._changed:
            while self._written < size and not self._finished and not self._aborted:
                self._changed.wait()
            if self._aborted:
                raise EarlyConversionStopped
            return self._written

    # -- the reader's side ----------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wanted = len(buffer)
        with self._changed:
            # A whole block unless the file ends first: a reader that caught up with the writer would
            # otherwise get the few bytes just written, and Arrow parses every read as a block of its own.
            while self._written - self._file.tell() < wanted and not self._finished and not self._aborted:
                self._changed.wait()
            if self._aborted:
                raise EarlyConversionStopped
            available = self._written - self._file.tell()
        count = self._file.readinto(memoryview(buffer)[: min(wanted, available)])
        return count or 0

    def read(self, size: int | None = -1, /) -> Any:
        """Up to ``size`` bytes in an Arrow buffer: Arrow's reader holds a few blocks in flight, and
        they belong in Arrow's memory pool rather than on Python's heap."""
        if size is None or size < 0:
            return self.readall()
        buffer = pa.allocate_buffer(size, memory_pool=conversion_memory_pool())
        count = self.readinto(memoryview(buffer).cast("B"))
        return buffer.slice(0, count)  # a view: shrinking a resizable buffer copied a short read

    def close(self) -> None:
        self._file.close()
        super().close()


class EarlyConversionStopped(Exception):
    pass


class EarlyConversion:
    """Runs :func:`app.datasets.inspection.early_csv_to_parquet` on a spool file as it grows.

    :attr:`written` reads the Parquet output as it is written (its bytes are final as soon as they
    are in the file: a Parquet writer never goes back). It ends (EOF) only once the conversion
    succeeded, and fails (:class:`EarlyConversionStopped`) when it gave up or was discarded, so a
    reader that got to its end has the complete file. An object store upload reads it to send the
    Parquet while it is still being encoded.
    """

    def __init__(self, spool: Path, output: Path, filename: str) -> None:
        self.output = output
        self._source = GrowingFile(spool)
        self.written = GrowingFile(output)
        self._spool = spool
        self._filename = filename
        self._result: tuple[int, list[dict[str, Any]]] | None = None
        self._thread = threading.Thread(target=self._run, name="early-conversion", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from app.datasets.inspection import early_csv_to_parquet

        try:
            self._result = early_csv_to_parquet(
                self._source, self._spool, self.output, self._filename, self.written.grew
            )
        except EarlyConversionStopped:
            pass
        except Exception as exc:  # the usual conversion will run, and report it properly
            log.debug("early conversion of %s gave up: %s", self._filename, exc)
        finally:
            self._source.close()
            if self._result is None:
                self.written.abort()
            else:
                self.written.finish()

    def grew(self, size: int) -> None:
        self._source.grew(size)

    def result(self) -> tuple[int, list[dict[str, Any]]] | None:
        """Once the upload is complete: (rows, column summaries) of ``output``, or None to convert anew."""
        self._source.finish()
        self._thread.join()
        return self._result

    def discard(self) -> None:
        """Stop the conversion and remove its output; whoever read :attr:`written` is done with it."""
        self._source.abort()
        self._thread.join()
        self.written.close()
        self.output.unlink(missing_ok=True)
