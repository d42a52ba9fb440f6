"""Reading a stored dataset's content: what the job submitter checks specs against and the worker trains on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.datasets.inspection import check_array_dtype
from app.errors import InvalidInput, Unavailable
from app.models import Dataset
from app.storage import KeyNotFound, get_storage

T = TypeVar("T")


def dataset_path(dataset: Dataset) -> Path:
    """A local copy of the stored blob: Parquet for tables (whatever was uploaded), the original file
    for ``.npz``. With an object store it comes from this machine's blob cache, fetched on a miss.

    Raises 503 ``dataset_file_missing`` when the store has no such blob, ``storage_unavailable`` when
    the store cannot be reached (or has no such bucket). A local file error (the cache directory
    deleted under us) is not reported as a missing blob.
    """
    try:
        return get_storage().local_path(dataset.storage_key)
    except KeyNotFound as exc:
        raise _missing(dataset) from exc


def read_dataset_file(dataset: Dataset, reader: Callable[[Path], T]) -> T:
    """``reader`` of a local copy of the stored blob (errors as :func:`dataset_path`). A cached copy
    that vanishes before it is opened, or fails to read (damaged on this machine's disk), is fetched
    once more and read again."""
    try:
        return get_storage().read_local(dataset.storage_key, reader)
    except KeyNotFound as exc:
        raise _missing(dataset) from exc


def _missing(dataset: Dataset) -> Unavailable:
    return Unavailable("dataset_file_missing", f"the stored file of dataset '{dataset.id}' is missing from storage")


def load_dataset_data(dataset: Dataset, columns: list[str] | None = None) -> pa.Table | dict[str, np.ndarray[Any, Any]]:
    """The dataset's content: a ``pyarrow.Table`` for tables, ``{name: array}`` for ``.npz``.

    ``columns`` selects table columns (or arrays) to read; unknown names raise a 422 naming them.
    Arrays are loaded with ``allow_pickle=False``: an upload is never unpickled.
    """
    return read_dataset_file(dataset, lambda path: _read(path, columns))


def _read(path: Path, columns: list[str] | None) -> pa.Table | dict[str, np.ndarray[Any, Any]]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files) if columns is None else columns
            _check_known(names, list(npz.files), "array")
            arrays = {name: npz[name] for name in names}
        for name, array in arrays.items():  # datasets stored before uploads were checked for these
            check_array_dtype(array.dtype, name)
        return arrays
    if columns is not None:
        _check_known(columns, pq.read_schema(path).names, "column")
    return pq.read_table(path, columns=columns)


def _check_known(requested: list[str], available: list[str], kind: str) -> None:
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise InvalidInput(
            f"{kind}_not_found",
            f"{kind} {', '.join(repr(n) for n in unknown)} not found; {kind}s are: {', '.join(available)}",
            {"unknown": unknown, "available": available},
        )
