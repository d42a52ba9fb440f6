"""Where a job's time goes: prepare / train / evaluate / persist seconds of one regression job.

The job of issue 10: ``arrays`` layout, an LSTM (hidden 64) over windows of 100 steps x 8 features,
batch 1024, 5 epochs, the default evaluation (1000 bootstrap resamples, baselines, attribution).
``prepare`` is building the windows, the split, the scalers and the scaled arrays on the device;
``train`` the epoch loop (``EngineResult.train_seconds``, validation included); ``evaluate`` the
metrics, bootstrap, baselines and attribution; ``persist`` what the worker does with the result
outside SQL (``torch.save`` of the artifact, the evaluation as JSON). Goal: everything but training
at most 25% of training on a CPU (10k windows), at most the training time on CUDA (100k windows).

    python bench/job_phases.py                                   # CPU, 10k windows
    python bench/job_phases.py --device cuda --windows 100000
    python bench/job_phases.py --profile                         # and cProfile's top functions

Last line: ``outside training / training: X.XX``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engine import JobSpec, train_and_evaluate  # noqa: E402


def job(args: argparse.Namespace) -> tuple[JobSpec, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.windows, args.steps, args.features)).astype(np.float32)
    y = (x[:, -5:, 0].mean(axis=1) + 0.1 * rng.standard_normal(args.windows)).astype(np.float32)
    spec = JobSpec.model_validate(
        {
            "dataset_id": "bench",
            "task": "regression",
            "data": {"layout": "arrays", "target": "y"},
            "model": {"cell": "lstm", "hidden_size": args.hidden},
            "training": {"epochs": args.epochs, "batch_size": args.batch, "early_stopping_patience": None},
            "evaluation": {"attribution": not args.no_attribution},
            "device": args.device,
        }
    )
    return spec, {"X": x, "y": y}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 25 functions (cumulative)")
    parser.add_argument("--no-attribution", action="store_true", help="evaluation.attribution false")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA GPU on this machine; nothing measured")
        return
    spec, data = job(args)
    print(
        f"regression, LSTM hidden {args.hidden}, {args.windows} windows x {args.steps} steps x {args.features} "
        f"features, batch {args.batch}, {args.epochs} epochs, device {args.device}, "
        f"{torch.get_num_threads()} threads, attribution {not args.no_attribution}, torch {torch.__version__}",
        flush=True,
    )
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = train_and_evaluate(spec, data)
    if args.device == "cuda":
        torch.cuda.synchronize()
    engine_seconds = time.perf_counter() - started
    persist_started = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(result.artifact, buffer)
    assert result.evaluation is not None
    json.dumps(result.evaluation.model_dump(mode="json"))
    persist = time.perf_counter() - persist_started
    if profiler is not None:
        profiler.disable()
    train, evaluate, prepare = result.train_seconds, result.evaluation_seconds, result.prepare_seconds
    other = max(engine_seconds - train - evaluate - prepare, 0.0)
    for name, seconds in (
        ("prepare", prepare),
        ("train", train),
        ("evaluate", evaluate),
        ("persist", persist),
        ("other", other),
    ):
        print(f"{name:9s} {seconds:8.3f} s")
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        print(text.getvalue())
    outside = prepare + evaluate + persist + other
    print(f"outside training / training: {outside / train:.2f}")


if __name__ == "__main__":
    main()
