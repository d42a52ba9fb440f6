"""Dataset shapes on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ColumnInfo(BaseModel):
    name: str
    dtype: str = Field(description="int64, float64, string, bool, timestamp, date, … ('null' when all missing)")
    missing: int = Field(description="Missing (null/empty/NA/NaN) values in the column.")


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    format: str = Field(description="Uploaded format: csv, csv.gz, parquet or npz (tables are stored as Parquet).")
    size_bytes: int = Field(description="Size of the uploaded file.")
    sha256: str = Field(description="SHA-256 of the uploaded file.")
    created_at: datetime
    num_rows: int | None = Field(default=None, description="Rows of a table; null for .npz.")
    columns: list[ColumnInfo] | None = Field(default=None, description="Columns of a table; null for .npz.")
    arrays: dict[str, list[int]] | None = Field(default=None, description="Array name → shape for .npz.")


class ArrayPreview(BaseModel):
    shape: list[int]
    dtype: str
    head: Any = Field(
        default=None,
        description="The first entries along the first axis (the scalar for a 0-d array); null when "
        "one entry alone is too large to show.",
    )
    shown: int = Field(description="Entries shown along the first axis.")


class DatasetPreview(BaseModel):
    id: str
    format: str
    num_rows: int | None = None
    columns: list[ColumnInfo] | None = None
    rows: list[dict[str, Any]] | None = Field(default=None, description="The first rows of a table.")
    arrays: dict[str, ArrayPreview] | None = Field(default=None, description="The head of each .npz array.")


class DatasetSummary(BaseModel):
    """A dataset in a list: its column count instead of its columns (``GET /datasets/{id}`` has them)."""

    id: str
    name: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    created_at: datetime
    num_rows: int | None = None
    num_columns: int | None = Field(default=None, description="Columns of a table; null for .npz.")
    arrays: dict[str, list[int]] | None = None
