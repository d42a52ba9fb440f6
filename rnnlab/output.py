"""``--output table|json|csv``: one way to print rows for every read command of the CLI.

Every text that comes from the user or the server (names, columns, messages) is printed as plain
text, never parsed as rich markup: a dataset named ``prices [/eur]`` shows as just that.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


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
    if isinstance(value, dict) and value and all(isinstance(v, int | float | str | bool) for v in value.values()):
        # A sweep setting: its paths in one order, values rounded like every other cell (a tpe search's
        # learning rate printed as 0.0052150863871942895).
        return ", ".join(f"{key}={cell(value[key])}" for key in sorted(value))
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


def is_id_column(column: str) -> bool:
    return column == "id" or column.endswith("_id")


def table_console(table: Table) -> Console:
    """The console to print ``table`` on stdout. Not a terminal (a pipe, a file, CI): as wide as the
    table needs, so no cell is wrapped onto a second line; a terminal: its own width."""
    console = Console(soft_wrap=False)
    if console.is_terminal:
        return console
    wide = Console(file=io.StringIO(), width=1_000_000)
    return Console(soft_wrap=False, width=max(Measurement.get(wide, wide.options, table).maximum, 20))


def progress_console() -> Console:
    """The console for live progress bars, on stderr. Not a terminal: rich draws the bar once, when it
    ends, and as wide as it needs (a CI log gets the whole line, not one cut at 80 columns)."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=1000)


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
    # Text objects, not strings: rich would read "[/eur]" in a name as a closing tag.
    table = Table(title=Text(title) if title is not None else None, title_justify="left")
    for column in columns:
        if is_id_column(column):  # an id is copied whole: never folded across lines
            longest = max((len(cell(row.get(column))) for row in rows), default=0)
            table.add_column(Text(column), no_wrap=True, min_width=max(longest, len(column)))
        else:
            table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell(row.get(c))) for c in columns))
    table_console(table).print(table)
