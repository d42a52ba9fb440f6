"""A job's per-epoch metrics as CSV: one row per epoch, one column per ``split.metric``."""

from __future__ import annotations

import csv
import io
from typing import Any


def metrics_csv(series: list[dict[str, Any]]) -> str:
    """``epoch,train.loss,val.loss,…`` with an empty cell where an epoch lacks a value (e.g. NaN stored as null)."""
    columns = sorted({f"{s['split']}.{s['name']}" for s in series})
    rows: dict[int, dict[str, float | None]] = {}
    for s in series:
        column = f"{s['split']}.{s['name']}"
        for epoch, value in zip(s["epochs"], s["values"], strict=True):
            rows.setdefault(epoch, {})[column] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *columns])
    for epoch in sorted(rows):
        values = rows[epoch]
        writer.writerow([epoch, *(_cell(values.get(c)) for c in columns)])
    return out.getvalue()


def _cell(value: float | None) -> str:
    # repr keeps every digit (a CSV is for further analysis, not for reading).
    return "" if value is None else repr(value)
