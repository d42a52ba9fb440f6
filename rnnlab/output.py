"""``--output table|json|csv``: one way to print rows for every read command of the CLI."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def cell(value: Any) -> str:
    """A value for a table: floats to 4 significant digits, for reading."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"  # an interval
    return csv_cell(value)


def csv_cell(value: Any) -> str:
    """A value for CSV: numbers exactly as the API sent them (floats round-trip), nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)  # repr of a float: the shortest text that reads back as the same float


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    output: OutputFormat,
    *,
    title: str | None = None,
    raw: Any = None,
) -> None:
    """Rows as a rich table, CSV, or JSON (``raw`` when given: the API's own body, untouched)."""
    if output == OutputFormat.json:
        print_json(raw if raw is not None else list(rows))
        return
    if output == OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in columns])
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    Console(soft_wrap=False).print(table)
