"""How the data-aware defaults were chosen: the engine, in-process, on the bench's data sets only.

Runs default-spec jobs (3 seeds × {lstm, gru}) with one option overridden per variant and prints
the test metric per data set and variant (mean ± std, min), so that each default in
``worker/engine/defaults.py`` can be read off a measurement. Faster than ``bench/quality.py`` (no
service), and never used on the held-out data sets.

    python bench/quality_tune.py --sets ArrowHead JapaneseVowels \\
        --variant base= --variant no_bias=model.forget_gate_bias:null --variant mean=model.pooling:mean \\
        --variant long=const.MIN_AUTO_STEPS:3000

``const.NAME:value`` sets a constant of ``worker/engine/defaults.py`` in the variant's runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality_data import BenchSet, bench_sets  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name=path:json,path:json`` → (name, {path: value})."""
    name, _, rest = text.partition("=")
    overrides: dict[str, Any] = {}
    # Items split at a comma that starts the next ``section.name:`` (a JSON value may hold commas).
    for item in filter(None, re.split(r",(?=[A-Za-z_]+\.[A-Za-z_]+:)", rest)):
        path, _, value = item.partition(":")
        overrides[path] = json.loads(value)
    return name, overrides


def build_spec(bench: BenchSet, cell: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": bench.name,
        "task": bench.task,
        "data": json.loads(json.dumps(bench.data)),
        "model": {"cell": cell},
        "training": {"seed": seed},
        "evaluation": {"bootstrap_samples": 0, "attribution": False},
        "device": "cpu",
    }
    for path, value in overrides.items():
        section, name = path.split(".", 1)
        spec.setdefault(section, {})[name] = value
    return spec


def run_one(args: tuple[str, str, str, int, dict[str, Any]]) -> tuple[str, str, float, float, int, int, float]:
    import torch

    from worker.engine import defaults

    torch.set_num_threads(1)
    set_name, variant, cell, seed, overrides = args
    overrides = dict(overrides)

    # ``const.NAME``: a constant of worker/engine/defaults.py, for trying a rule before changing it
    # (restored afterwards: the pool's processes run other variants next).
    saved: dict[str, Any] = {}
    for path in [p for p in overrides if p.startswith("const.")]:
        name = path.removeprefix("const.")
        if not hasattr(defaults, name):
            raise SystemExit(f"worker/engine/defaults.py has no constant {name}")
        saved[name] = getattr(defaults, name)
        setattr(defaults, name, overrides.pop(path))
    try:
        return _run(set_name, variant, cell, seed, overrides)
    finally:
        for name, value in saved.items():
            setattr(defaults, name, value)


def _run(
    set_name: str, variant: str, cell: str, seed: int, overrides: dict[str, Any]
) -> tuple[str, str, float, float, int, int, float]:
    import pyarrow.csv as pacsv

    from worker.engine import JobSpec, train_and_evaluate

    bench = next(b for b in SETS if b.name == set_name)
    table = pacsv.read_csv(io.BytesIO(bench.content))
    spec = JobSpec.model_validate(build_spec(bench, cell, seed, overrides))
    started = time.perf_counter()
    result = train_and_evaluate(spec, table)
    assert result.evaluation is not None
    value = float(result.evaluation.metrics["test"][bench.metric])
    # The job's validation metric; for residual 'ar' after the refit, which has seen those windows.
    val = float(result.evaluation.metrics["val"].get(bench.metric, float("nan")))
    took = time.perf_counter() - started
    for note in result.evaluation.notes:
        if note.startswith("model.ar_scale"):
            print(f"    {set_name} {variant} {cell} {seed}: {note}", flush=True)
    return set_name, variant, value, took, result.epochs_run, result.num_examples["test"], val


SETS: list[BenchSet] = []
TEST_WINDOWS: dict[str, int] = {}  # forecast sets: the job's test windows, for the references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=None)
    parser.add_argument("--variant", action="append", default=[], help="name=path:json,… (empty: the defaults)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cells", nargs="*", default=["lstm", "gru"])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    SETS.extend(bench_sets(args.sets))
    variants = [parse_variant(v) for v in args.variant] or [("base", {})]
    tasks = [
        (b.name, name, cell, seed, overrides)
        for b in SETS
        for name, overrides in variants
        for cell in args.cells
        for seed in range(args.seeds)
    ]
    results: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for set_name, variant, value, took, epochs, test_windows, val in pool.map(run_one, tasks):
            TEST_WINDOWS[set_name] = test_windows
            results.setdefault((set_name, variant), []).append(value)
            seconds[(set_name, variant)] = seconds.get((set_name, variant), 0.0) + took
            print(f"  {set_name} {variant}: {value:.4f} (val {val:.4f}; {took:.0f} s, {epochs} epochs)", flush=True)
    from quality import forecast_references, nearest_neighbour_accuracy

    for b in SETS:
        if b.task == "classification":
            print(f"{b.name:16s} reference 1-NN Euclidean {nearest_neighbour_accuracy(b):.4f}")
        else:
            refs = forecast_references(b, TEST_WINDOWS[b.name])
            print(f"{b.name:16s} references " + ", ".join(f"{k} {v:.4f}" for k, v in refs.items()))
        for name, _ in variants:
            values = results[(b.name, name)]
            print(
                f"{b.name:16s} {name:14s} {b.metric} {statistics.mean(values):.4f} ± "
                f"{statistics.pstdev(values):.4f}  min {min(values):.4f} max {max(values):.4f}  "
                f"({seconds[(b.name, name)]:.0f} s)"
            )


if __name__ == "__main__":
    main()
