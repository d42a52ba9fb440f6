"""Dataset operations: every query and storage action of the domain lives here.

Blobs are content-addressed by the upload's SHA-256 (``datasets/ab/abcd….parquet``), so identical
content is stored once whichever project sends it. A project that uploads content it already has
gets its existing dataset back (HTTP 200 instead of 201); another project gets its own row pointing
at the same blob, which is deleted only with the last row that references it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import zipfile
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from starlette.requests import Request

from app.config import get_settings
from app.datasets.formats import stem
from app.datasets.inspection import (
    InspectedContent,
    check_npy_dtype,
    dictionary_leaves,
    inspect_upload,
    is_binary_like,
    read_npy_header,
)
from app.datasets.loading import read_dataset_file
from app.datasets.schemas import ArrayPreview, ColumnInfo, DatasetPreview
from app.datasets.upload import MULTIPART_OVERHEAD_BYTES, ReceivedUpload, receive_upload
from app.db import get_scoped
from app.errors import AppError, Conflict
from app.jobs.status import ACTIVE
from app.models import Dataset, Job, Sweep
from app.pagination import PageParams, fetch_page
from app.quotas import check_stored_bytes_quota
from app.storage import Storage, StorageUnavailable, StreamedPut, get_storage, temp_owner

log = logging.getLogger(__name__)

MAX_PREVIEW_VALUES_PER_ARRAY = 10_000
# A preview's cells are short: text longer than this many characters (bytes, for binary values) is cut
# there and ends with a note of its full length, a list keeps this many items and then a note of how
# many it had. A cell of 1 MiB of text made a preview of 100 rows a 105 MB response.
MAX_PREVIEW_CELL_CHARS = 200
MAX_PREVIEW_CELL_ITEMS = 50
# And the whole preview of a table stops at about this much JSON (always at least one row): a preview
# may hold fewer rows than asked for. An array's preview reads at most this much of it.
MAX_PREVIEW_BYTES = 4 * 1024 * 1024


def decompressed_limit() -> int:
    settings = get_settings()
    return min(settings.max_upload_bytes, settings.max_decompressed_bytes)


def storage_key(sha256: str, suffix: str) -> str:
    return f"datasets/{sha256[:2]}/{sha256}{suffix}"


# -- reading -------------------------------------------------------------------------------------


def get_dataset(session: Session, project_id: str, dataset_id: str) -> Dataset:
    """The project's dataset; 404 ``dataset_not_found`` when it is missing or another project's."""
    return get_scoped(session, Dataset, project_id, dataset_id, "dataset")


def list_datasets(
    session: Session, project_id: str, params: PageParams
) -> tuple[list[tuple[Dataset, int | None]], str | None]:
    """One page of the project's datasets, newest first, each with its column count.

    The column lists are not loaded (a page of wide tables was megabytes); one dataset's GET has them.
    """
    query = select(Dataset).options(defer(Dataset.columns, raiseload=True)).where(Dataset.project_id == project_id)
    rows, cursor = fetch_page(session, query, params, Dataset.created_at, Dataset.id)
    counts: dict[str, int | None] = {}
    if rows:
        counted = select(Dataset.id, func.json_array_length(Dataset.columns)).where(
            Dataset.id.in_([r.id for r in rows])
        )
        counts = {dataset_id: count for dataset_id, count in session.execute(counted)}
    return [(row, counts.get(row.id)) for row in rows], cursor


# -- uploading -----------------------------------------------------------------------------------


async def upload_dataset(session: Session, project_id: str, request: Request) -> tuple[Dataset, bool]:
    """Receive a multipart upload and record it; returns the dataset and whether it is new.

    The request's transaction is ended first so no database connection idles while a large file
    streams in; the upload, inspection and conversion run off the event loop.
    """
    settings = get_settings()
    declared = request.headers.get("content-length", "")
    # Refused from the headers when the announced body alone passes the quota; checked again below.
    await anyio.to_thread.run_sync(
        check_stored_bytes_quota,
        session,
        project_id,
        max(0, int(declared) - MULTIPART_OVERHEAD_BYTES) if declared.isdigit() else 0,
    )
    await anyio.to_thread.run_sync(session.commit)
    upload = await receive_upload(request, get_storage(), settings.max_upload_bytes, settings.upload_chunk_bytes)
    return await anyio.to_thread.run_sync(create_dataset, session, project_id, upload)


def create_dataset(session: Session, project_id: str, upload: ReceivedUpload) -> tuple[Dataset, bool]:
    """Validate, describe and store a received upload (whose temporary file this consumes)."""
    storage = get_storage()
    work_dir = Path(tempfile.mkdtemp(dir=storage.temp_dir, prefix=f"{temp_owner()}dataset-"))
    try:
        mine = _same_content(session, project_id, upload)
        if mine is not None:
            if not storage.exists(mine.storage_key):  # its blob was lost: store it again
                content = inspect_upload(
                    upload.path,
                    upload.format,
                    upload.filename,
                    work_dir,
                    decompressed_limit(),
                    upload.early,
                    upload.text,
                )
                storage.put_file(content.stored_path, mine.storage_key)
            return mine, False
        check_stored_bytes_quota(session, project_id, upload.size_bytes)
        try:
            return _new_row(session, project_id, upload, storage, work_dir), True
        except IntegrityError:
            # An identical upload to this project committed first (the unique constraint).
            session.rollback()
            winner = _same_content(session, project_id, upload)
            if winner is None:
                raise
            return winner, False
    finally:
        upload.discard_early()
        upload.path.unlink(missing_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)


def _same_content(session: Session, project_id: str, upload: ReceivedUpload) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(
            Dataset.project_id == project_id,
            Dataset.sha256 == upload.sha256,
            Dataset.format == upload.format,
        )
    )


def _new_row(session: Session, project_id: str, upload: ReceivedUpload, storage: Storage, work_dir: Path) -> Dataset:
    max_bytes = decompressed_limit()
    # Another project's identical upload was already checked and converted: share its blob.
    twin = session.scalar(
        select(Dataset).where(Dataset.sha256 == upload.sha256, Dataset.format == upload.format).limit(1)
    )
    content: InspectedContent | None = None
    streamed: StreamedPut | None = None
    try:
        if twin is not None and storage.exists(twin.storage_key):
            key, num_rows, columns, arrays = twin.storage_key, twin.num_rows, twin.columns, twin.arrays
        else:
            streamed = _send_early_parquet(storage, upload)
            content = inspect_upload(
                upload.path, upload.format, upload.filename, work_dir, max_bytes, upload.early, upload.text
            )
            key = storage_key(upload.sha256, content.suffix)
            num_rows, columns, arrays = content.num_rows, content.columns, content.arrays
            if streamed is not None and (streamed.source != content.stored_path or streamed.key != key):
                streamed.abort()  # the usual conversion ran: its file is put below
                streamed = None
        return _commit_row(
            session, project_id, upload, storage, work_dir, key, num_rows, columns, arrays, content, streamed
        )
    finally:
        if streamed is not None:
            streamed.abort()  # a no-op once completed; otherwise nothing of it stays in the store


def _send_early_parquet(storage: Storage, upload: ReceivedUpload) -> StreamedPut | None:
    """An object store upload of the CSV's early Parquet, started while it is still being encoded.

    The sha256 (the key) is known once the body arrived, and the encoding still runs a while then:
    sending the Parquet meanwhile overlaps the store's upload with it instead of following it.
    Completed only if that Parquet is the one stored, after the row is committed; aborted otherwise.
    """
    if upload.early is None or upload.format != "csv":
        return None
    return storage.start_put(upload.early.output, storage_key(upload.sha256, ".parquet"), upload.early.written)


def _commit_row(
    session: Session,
    project_id: str,
    upload: ReceivedUpload,
    storage: Storage,
    work_dir: Path,
    key: str,
    num_rows: int | None,
    columns: list[dict[str, Any]] | None,
    arrays: dict[str, list[int]] | None,
    content: InspectedContent | None,
    streamed: StreamedPut | None,
) -> Dataset:
    max_bytes = decompressed_limit()
    row = Dataset(
        project_id=project_id,
        name=upload.name or stem(upload.filename),
        filename=upload.filename,
        format=upload.format,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        storage_key=key,
        num_rows=num_rows,
        columns=columns,
        arrays=arrays,
    )
    session.add(row)
    # The row is committed before the blob is moved into place: a concurrent delete of the last
    # other row sharing this blob then sees our row and keeps the blob.
    session.commit()
    try:
        if content is None and not storage.exists(key):
            # The shared blob vanished between the check and the commit (its last row was deleted).
            content = inspect_upload(
                upload.path, upload.format, upload.filename, work_dir, max_bytes, upload.early, upload.text
            )
        if streamed is not None:
            streamed.complete()
        elif content is not None:
            storage.put_file(content.stored_path, key)
    except BaseException:
        session.delete(row)
        session.commit()
        raise
    return row


# -- deleting ------------------------------------------------------------------------------------


def delete_dataset(session: Session, project_id: str, dataset_id: str) -> None:
    """Delete the dataset, and its blob when no other dataset shares it.

    409 ``dataset_in_use`` while a queued or running job uses it; 409 ``dataset_referenced`` while
    finished jobs or sweeps still refer to it (they keep their dataset for reproducibility).
    """
    dataset = get_dataset(session, project_id, dataset_id)
    active = list(
        session.scalars(
            select(Job.id)
            .where(Job.dataset_id == dataset.id, Job.status.in_(ACTIVE))
            .order_by(Job.created_at)
            .limit(20)
        )
    )
    if active:
        raise _in_use(dataset.id, active)
    jobs = session.scalar(select(func.count()).select_from(Job).where(Job.dataset_id == dataset.id)) or 0
    sweeps = session.scalar(select(func.count()).select_from(Sweep).where(Sweep.dataset_id == dataset.id)) or 0
    if jobs or sweeps:
        raise Conflict(
            "dataset_referenced",
            f"dataset '{dataset.id}' is referenced by {jobs} finished job(s) and {sweeps} sweep(s); "
            "delete them first (DELETE /api/v1/jobs/{id}, DELETE /api/v1/sweeps/{id})",
            {"jobs": jobs, "sweeps": sweeps},
        )
    key = dataset.storage_key
    session.delete(dataset)
    try:
        session.commit()
    except IntegrityError as exc:  # a job was created for it since the check above
        session.rollback()
        raise _in_use(dataset_id, []) from exc
    shared = session.scalar(select(exists().where(Dataset.storage_key == key)))
    if not shared:
        try:
            get_storage().delete(key)
        except StorageUnavailable as exc:
            # The dataset is gone; its blob stays behind (content-addressed: an identical upload
            # later reuses it). Better than refusing the delete while the store is down.
            log.warning("dataset %s deleted, but its blob %s could not be removed: %s", dataset_id, key, exc.message)


def _in_use(dataset_id: str, job_ids: list[str]) -> AppError:
    shown = f": {', '.join(job_ids)}" if job_ids else ""
    return Conflict(
        "dataset_in_use",
        f"dataset '{dataset_id}' is used by queued or running jobs{shown}; cancel them or wait until they finish",
        {"jobs": job_ids, "job_ids": job_ids},  # "jobs" as in job_active and sweep_active; job_ids kept
    )


# -- previewing ----------------------------------------------------------------------------------


def preview_dataset(dataset: Dataset, rows: int) -> DatasetPreview:
    """The first ``rows`` rows of a table, or the first ``rows`` entries of each ``.npz`` array.

    A table shows at most RNNLAB_MAX_PREVIEW_CELLS cells: fewer rows for a wide one.
    """
    if dataset.columns:
        rows = max(1, min(rows, get_settings().max_preview_cells // len(dataset.columns)))
    columns = [ColumnInfo.model_validate(c) for c in dataset.columns] if dataset.columns else None
    preview = DatasetPreview(id=dataset.id, format=dataset.format, num_rows=dataset.num_rows, columns=columns)

    def read(path: Path) -> None:
        if path.suffix == ".npz":
            preview.arrays = _preview_arrays(path, dataset.filename, rows)
        else:
            preview.rows = _preview_table(path, rows)

    # Through the cache's reader: a copy damaged on this machine's disk is fetched again and re-read.
    read_dataset_file(dataset, read)
    return preview


def _preview_table(path: Path, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` rows as JSON values, each cell shortened (see :func:`_preview_values`) and
    the whole kept under MAX_PREVIEW_BYTES of UTF-8 JSON. Dictionary-encoded text is read as
    dictionaries and cut before it is decoded, so a repeated long value is never expanded in full."""
    out: list[dict[str, Any]] = []
    size = 0
    with pq.ParquetFile(path) as parquet:
        leaves = dictionary_leaves(parquet.metadata)
    with pq.ParquetFile(path, read_dictionary=leaves or None) as parquet:
        for batch in parquet.iter_batches(batch_size=rows):
            batch = batch.slice(0, rows - len(out))
            columns = [
                (name, _preview_values(column)) for name, column in zip(batch.schema.names, batch.columns, strict=True)
            ]
            for i in range(batch.num_rows):
                cells = {name: values[i] for name, values in columns}
                size += len(json.dumps(cells, ensure_ascii=False, default=str).encode())
                if out and size > MAX_PREVIEW_BYTES:
                    return out
                out.append(cells)
            if len(out) >= rows:
                break
    return out


def _preview_values(column: pa.Array) -> list[Any]:
    """The column's values as JSON values, shortened at any depth: text longer than
    MAX_PREVIEW_CELL_CHARS characters (bytes, for binary) is cut there and ends with a note of its full
    length; a list, fixed-size list or map keeps MAX_PREVIEW_CELL_ITEMS items and then a last item
    noting how many it had. The cuts are made in Arrow, before the values become Python objects, and a
    dictionary's text is cut before it is decoded. A map's entries are ``[key, value]`` pairs."""
    kind = column.type
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        column = column.cast(pa.large_string() if pa.types.is_string_view(kind) else pa.large_binary())
        kind = column.type
    if pa.types.is_dictionary(kind) and is_binary_like(kind.value_type):
        head, lengths = _cut_text(column.dictionary)
        full = None if lengths is None else pc.take(lengths, column.indices)
        return _noted_text(pc.take(head, column.indices), full, _text_unit(head.type))
    if pa.types.is_dictionary(kind):
        return _preview_values(column.dictionary_decode())
    if is_binary_like(kind):
        head, lengths = _cut_text(column)
        return _noted_text(head, lengths, _text_unit(kind))
    if pa.types.is_map(kind):
        # As a list of its key/value structs (offsets are absolute in the entries; nulls from the map).
        entries = pa.ListArray.from_arrays(column.offsets, column.values)
        valid = column.is_valid().to_pylist()
        key, item = kind.key_field.name, kind.item_field.name
        pairs = _preview_lists(entries)
        return [
            [[entry[key], entry[item]] if isinstance(entry, dict) else entry for entry in cell]
            if ok and cell is not None
            else None
            for cell, ok in zip(pairs, valid, strict=True)
        ]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _preview_lists(column)
    if pa.types.is_struct(kind):
        valid = column.is_valid().to_pylist()
        fields = [(kind.field(i).name, _preview_values(column.field(i))) for i in range(kind.num_fields)]
        return [{name: values[r] for name, values in fields} if ok else None for r, ok in enumerate(valid)]
    return [jsonable(value) for value in _column_values(column)]


def _preview_lists(column: pa.Array) -> list[Any]:
    """Each list of ``column`` as at most MAX_PREVIEW_CELL_ITEMS previewed items (and a note)."""
    lengths = pc.list_value_length(column).to_pylist()
    kept = pc.list_slice(column, 0, MAX_PREVIEW_CELL_ITEMS, return_fixed_size_list=False)
    items = _preview_values(kept.flatten())
    out: list[Any] = []
    at = 0
    for length in lengths:
        if length is None:
            out.append(None)
            continue
        taken = min(length, MAX_PREVIEW_CELL_ITEMS)
        cell = items[at : at + taken]
        at += taken
        if length > MAX_PREVIEW_CELL_ITEMS:
            cell.append(f"… [{length} items, truncated]")
        out.append(cell)
    return out


def _noted_text(head: pa.Array, lengths: pa.Array | None, unit: str) -> list[Any]:
    """Text already cut to MAX_PREVIEW_CELL_CHARS, each cut value ending with a note of its length."""
    values = [jsonable(value) for value in head.to_pylist()]
    if lengths is None:
        return values
    return [
        value + f"… [{length} {unit}, truncated]" if length is not None and length > MAX_PREVIEW_CELL_CHARS else value
        for value, length in zip(values, lengths.to_pylist(), strict=True)
    ]


def _text_unit(kind: pa.DataType) -> str:
    return "characters" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else "bytes"


def _cut_text(values: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """String or binary values cut to MAX_PREVIEW_CELL_CHARS characters (bytes), and their lengths
    before (``None`` when none was longer)."""
    text = _text_unit(values.type) == "characters"
    lengths = pc.utf8_length(values) if text else pc.binary_length(values)
    if (pc.max(lengths).as_py() or 0) <= MAX_PREVIEW_CELL_CHARS:
        return values, None
    head = (pc.utf8_slice_codeunits if text else pc.binary_slice)(values, 0, MAX_PREVIEW_CELL_CHARS)
    return head, lengths


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _column_values(column: pa.Array) -> list[Any]:
    """The column as Python values. What Python's datetime types cannot hold is shown otherwise: a
    nanosecond timestamp or time as Arrow's exact text, a duration as seconds (as :func:`jsonable`
    shows the others), a date or timestamp before year 1 or after 9999 as the number it stores."""
    try:
        return list(column.to_pylist())
    except (OverflowError, ValueError):
        pass
    kind = column.type
    fallback: list[Any] = [None] * len(column)  # nested values holding such a value: null
    if pa.types.is_temporal(kind):
        fallback = _temporal_fallback(column)
    values: list[Any] = []
    for i in range(len(column)):
        try:
            values.append(column[i].as_py())
        except (OverflowError, ValueError):
            values.append(fallback[i])
    return values


def _temporal_fallback(column: pa.Array) -> list[Any]:
    kind = column.type
    raw = column.view(pa.int32() if kind.bit_width == 32 else pa.int64()).to_pylist()
    if pa.types.is_duration(kind):
        return [None if r is None else r / _PER_SECOND[kind.unit] for r in raw]
    if pa.types.is_timestamp(kind) and kind.unit == "ns":  # int64 nanoseconds span 1677-2262: all exact
        text = pc.cast(column.cast(pa.timestamp("ns")), pa.string()).to_pylist()  # tz-aware values are UTC
        suffix = "+00:00" if kind.tz else ""
        return [None if t is None else t.replace(" ", "T") + suffix for t in text]
    if pa.types.is_time(kind):
        return list(pc.cast(column, pa.string()).to_pylist())
    unit = "days" if pa.types.is_date32(kind) else "ms" if pa.types.is_date64(kind) else kind.unit
    return [None if r is None else f"out of range: {r} {unit} since 1970-01-01" for r in raw]


def _preview_arrays(path: Path, filename: str, rows: int) -> dict[str, ArrayPreview]:
    previews: dict[str, ArrayPreview] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                header = read_npy_header(member, name, filename)
                check_npy_dtype(header, name)  # stored before uploads were checked for empty dtypes
                shape, dtype = header.shape, header.dtype
                if not shape:  # a 0-d array: its single value
                    value = np.frombuffer(member.read(dtype.itemsize), dtype=dtype).reshape(())
                    previews[name] = ArrayPreview(shape=[], dtype=str(dtype), head=jsonable(value.tolist()), shown=1)
                    continue
                per_entry = math.prod(shape[1:])
                shown = min(rows, shape[0], MAX_PREVIEW_VALUES_PER_ARRAY // max(per_entry, 1))
                shown = min(shown, MAX_PREVIEW_BYTES // max(per_entry * dtype.itemsize, 1))  # long strings
                head = None
                if shown > 0 and (not header.fortran_order or len(shape) == 1):
                    data = member.read(shown * per_entry * dtype.itemsize)
                    head = jsonable(np.frombuffer(data, dtype=dtype).reshape((shown, *shape[1:])).tolist())
                else:
                    shown = 0  # Fortran-ordered rows are not contiguous; the shape and dtype must do
                previews[name] = ArrayPreview(shape=list(shape), dtype=str(dtype), head=head, shown=shown)
    return previews


def jsonable(value: Any) -> Any:
    """Plain JSON values for a preview: NaN/inf become null, dates ISO strings, bytes text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and len(value) > MAX_PREVIEW_CELL_CHARS:  # text inside lists, structs, arrays
        return f"{value[:MAX_PREVIEW_CELL_CHARS]}… [{len(value)} characters, truncated]"
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value
