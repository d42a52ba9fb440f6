"""Grid search against TPE + pruning over the same space, on two synthetic tasks with a known best.

Both searches train with the rnnlab engine in this process (CPU, one thread) and pick settings on
the final *validation* metric only, as a tpe sweep does. The TPE search uses the sampler and
pruner the service builds (``app.sweeps.search.make_sampler`` / ``make_pruner``, Hyperband by
default) and reports each epoch's validation metric to the pruner, as the worker does; a pruned
trial stops at that epoch. The grid trains every setting for every epoch.

Tasks (synthetic, so the best setting is known to exist in the space and results are reproducible):
- ``sine-forecast``: a noisy sine (period 20), one step ahead from 24 steps; objective val.rmse.
- ``frequency-classes``: sequences of 30 steps whose class is the frequency (1, 2 or 3 cycles) of a
  noisy, randomly shifted sine; objective val.accuracy.

For each task it prints the best validation score each search found and the epochs each trained.
"Reached" is the TPE best as a fraction of the grid best (grid/tpe for rmse, tpe/grid for accuracy,
1.0 = as good). The goal: within 1 point (1% of the grid's rmse; 0.01 accuracy) with at most half
the grid's epochs. Last line: ``search: tpe+pruning reached X of grid best with Y% of its epochs``
(X: the worse of the two tasks; Y: epochs over both tasks).

    python bench/search.py                 # 2 tasks × (32-setting grid + 10 TPE trials), a few minutes
    python bench/search.py --trials 8 --pruner median
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.sweeps.search import default_startup_trials, make_pruner, make_sampler  # noqa: E402
from app.sweeps.space import ParameterRange, distributions  # noqa: E402
from worker.engine import EpochReport, JobSpec, train_and_evaluate  # noqa: E402
from worker.engine.metrics import lower_is_better  # noqa: E402

SPACE = {
    "training.learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
    "model.hidden_size": [4, 8, 16, 32],
    "model.cell": ["rnn", "gru"],
}


def sine_task() -> tuple[dict[str, Any], Any, str]:
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    value = np.sin(2 * np.pi * t / 20) + 0.1 * rng.standard_normal(t.size)
    data = pa.table({"t": t, "value": value})
    spec = {
        "task": "forecast",
        "data": {"layout": "series", "target": "value", "features": ["value"], "lookback": 24},
    }
    return spec, data, "rmse"


def frequency_task() -> tuple[dict[str, Any], Any, str]:
    rng = np.random.default_rng(1)
    n, steps = 900, 30
    y = rng.integers(0, 3, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    t = np.arange(steps) / steps
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t[None, :] + phase[:, None]) + 0.3 * rng.standard_normal((n, steps))
    data = {"X": x[:, :, None].astype(np.float32), "y": y}
    spec = {"task": "classification", "data": {"layout": "arrays", "target": "y", "split": {"method": "stratified"}}}
    return spec, data, "accuracy"


def make_spec(task_spec: dict[str, Any], setting: dict[str, Any], epochs: int) -> JobSpec:
    body: dict[str, Any] = {
        "dataset_id": "bench",
        **task_spec,
        "model": {"num_layers": 1},
        "training": {"epochs": epochs, "batch_size": 32, "early_stopping_patience": None, "seed": 0},
        "evaluation": {"bootstrap_samples": 10, "attribution": False},
        "device": "cpu",
    }
    for path, value in setting.items():
        section, leaf = path.split(".")
        body[section] = {**body.get(section, {}), leaf: value}
    return JobSpec.model_validate(body)


def run_trial(
    task_spec: dict[str, Any], data: Any, metric: str, setting: dict[str, Any], epochs: int, trial: Any = None
) -> tuple[float, int, bool]:
    """(final validation metric, epochs trained, pruned) for one setting."""
    pruned = False

    def on_epoch(report: EpochReport) -> None:
        nonlocal pruned
        if trial is not None:
            trial.report(report.metrics["val"][metric], report.epoch)
            pruned = trial.should_prune()

    result = train_and_evaluate(
        make_spec(task_spec, setting, epochs), data, on_epoch=on_epoch, should_stop=lambda: pruned
    )
    if pruned:
        return float("nan"), result.epochs_run, True
    assert result.evaluation is not None
    return float(result.evaluation.metrics["val"][metric]), result.epochs_run, False


def grid_search(task_spec: dict[str, Any], data: Any, metric: str, epochs: int) -> tuple[float, int, dict[str, Any]]:
    lower = lower_is_better(metric)
    best, best_setting, total = None, {}, 0
    for values in itertools.product(*SPACE.values()):
        setting = dict(zip(SPACE, values, strict=True))
        value, ran, _ = run_trial(task_spec, data, metric, setting, epochs)
        total += ran
        if best is None or (value < best if lower else value > best):
            best, best_setting = value, setting
    assert best is not None
    return best, total, best_setting


def tpe_search(
    task_spec: dict[str, Any], data: Any, metric: str, epochs: int, trials: int, pruner: str, seed: int
) -> tuple[float, int, int, dict[str, Any]]:
    lower = lower_is_better(metric)
    startup = default_startup_trials(trials)
    study = optuna.create_study(
        direction="minimize" if lower else "maximize",
        sampler=make_sampler(seed, startup),
        pruner=make_pruner(pruner, epochs, startup),
    )
    dists = distributions({path: ParameterRange(choices=values) for path, values in SPACE.items()})
    total = pruned_count = 0
    for _ in range(trials):
        trial = study.ask(dists)
        value, ran, pruned = run_trial(task_spec, data, metric, dict(trial.params), epochs, trial)
        total += ran
        if pruned:
            pruned_count += 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return float(study.best_value), total, pruned_count, dict(study.best_params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pruner", choices=["median", "hyperband"], default="hyperband")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    reached: list[float] = []
    grid_epochs = tpe_epochs = 0
    for name, make in (("sine-forecast", sine_task), ("frequency-classes", frequency_task)):
        task_spec, data, metric = make()
        started = time.perf_counter()
        g_best, g_epochs, g_setting = grid_search(task_spec, data, metric, args.epochs)
        g_seconds = time.perf_counter() - started
        started = time.perf_counter()
        t_best, t_epochs, t_pruned, t_setting = tpe_search(
            task_spec, data, metric, args.epochs, args.trials, args.pruner, args.seed
        )
        t_seconds = time.perf_counter() - started
        lower = lower_is_better(metric)
        ratio = g_best / t_best if lower else t_best / g_best
        gap = (t_best - g_best) / g_best * 100 if lower else (g_best - t_best) * 100
        reached.append(ratio)
        grid_epochs += g_epochs
        tpe_epochs += t_epochs
        print(f"{name}: grid best val.{metric} {g_best:.4f} at {g_setting} in {g_epochs} epochs ({g_seconds:.0f} s)")
        print(
            f"{name}: tpe+{args.pruner} best val.{metric} {t_best:.4f} at {t_setting} in {t_epochs} epochs "
            f"({args.trials} trials, {t_pruned} pruned, {t_seconds:.0f} s)"
        )
        unit = "% of the grid's rmse" if lower else " accuracy points"
        verdict = "within 1 point" if gap <= 1.0 else "more than 1 point behind"
        print(
            f"{name}: reached {ratio:.3f} of grid best ({gap:+.2f}{unit} behind: {verdict}) "
            f"with {100 * t_epochs / g_epochs:.0f}% of its epochs"
        )
    print(
        f"search: tpe+pruning reached {min(reached):.3f} of grid best with "
        f"{100 * tpe_epochs / grid_epochs:.0f}% of its epochs"
    )


if __name__ == "__main__":
    main()
