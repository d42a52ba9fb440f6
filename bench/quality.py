"""Model quality of default-spec jobs on public benchmark data, through the real embedded service.

A client, as a new user would be: the bench fetches the ``sktime`` and ``statsmodels`` wheels with
pip (``.bench/wheels``, git-ignored), turns their UCR/UEA and forecasting data sets into upload
files (``bench/quality_data.py``), starts the embedded service (``python -m app.cli up``: SQLite,
the embedded broker and one real worker process running 2 jobs at a time), uploads each file and
submits, per data set:

- default-spec jobs for 3 seeds × {lstm, gru}: only ``dataset_id``, ``task``, ``data.layout``,
  ``data.target``, the split column the file has (UCR train/test) or, for a series, the order
  column, the lookback and the season — everything else left to the data-aware defaults;
- a small grid sweep around the defaults (learning rate × one option per task: scaling for
  classification, residual ``ar`` / ``last_value`` for forecasts; 2 seeds, lstm).

It prints, per data set: the metric, the default runs' mean ± std and min, the best swept
setting's mean, and the reference computed here from the raw data: 1-NN Euclidean on the
archive's train/test split for classification; naive, seasonal naive and least-squares AR on the
job's own test windows for forecasting. A data set passes when every default run beats the
reference(s) and its mean is within 3 points of accuracy (10% of MAE) of the best swept setting.
Below the table, per data set, how well its test part can tell each default run from the
strongest reference: the paired 95% bootstrap interval of (run − reference) per test example,
from the job's own ``/predict`` on the test inputs (1-NN for a univariate set, the AR for a series).

    python bench/quality.py                      # all 9 data sets
    python bench/quality.py --sweep-seeds 1 --concurrency 4   # the README's run: 18-24 min at load 4-6
    python bench/quality.py --sets Lynx Airline ShampooSales co2 nile elnino JapaneseVowels --sweep-seeds 1
    python bench/quality.py --sets ArrowHead Lynx --seeds 2

Last line: ``quality: N/M data sets where every default run beats the baselines and sits within
3 points (10% MAE) of the best swept setting``.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_data import BenchSet, bench_sets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("lstm", "gru")
ACCURACY_TOLERANCE = 0.03  # 3 points of accuracy
MAE_TOLERANCE = 0.10  # 10% of the best swept MAE
# The sweep around the defaults: the learning rate, and the option that matters most per family.
SWEEPS: dict[str, dict[str, list[Any]]] = {
    "classification": {"training.learning_rate": [0.001, 0.003], "data.scaling": ["per_example", "standard"]},
    "forecast": {"training.learning_rate": [0.001, 0.003], "model.residual": ["ar", "last_value"]},
}


# ---------------------------------------------------------------- references, computed here


def nearest_neighbour_accuracy(bench: BenchSet) -> float:
    """1-NN with Euclidean distance on the archive's train/test split (the UCR reference)."""
    return float(np.mean(nearest_neighbour_labels(bench) == np.asarray(bench.y_test)))


def test_targets(bench: BenchSet, test_windows: int) -> np.ndarray:
    """Indices of the series' last ``test_windows`` one-step targets (the job's temporal test part)."""
    assert bench.series is not None
    return np.arange(len(bench.series) - test_windows, len(bench.series))


def ar_forecasts(bench: BenchSet, targets: np.ndarray) -> np.ndarray:
    """Least-squares AR(lookback) with an intercept, fitted on every window before ``targets``."""
    assert bench.series is not None
    y = bench.series
    lookback = int(bench.data["lookback"])
    fit_targets = np.arange(lookback, targets[0])
    design = np.stack([y[t - lookback : t] for t in fit_targets])
    design = np.hstack([design, np.ones((len(design), 1))])
    coef, *_ = np.linalg.lstsq(design, y[fit_targets], rcond=None)
    test_design = np.hstack([np.stack([y[t - lookback : t] for t in targets]), np.ones((len(targets), 1))])
    return test_design @ coef


def forecast_references(bench: BenchSet, test_windows: int) -> dict[str, float]:
    """MAE of naive, seasonal naive and least-squares AR(lookback) on the last ``test_windows``
    one-step targets (the job's temporal test part), AR fitted on every earlier window."""
    assert bench.series is not None
    y = bench.series
    targets = test_targets(bench, test_windows)
    refs = {"naive": float(np.mean(np.abs(y[targets] - y[targets - 1])))}
    if bench.season is not None:
        refs["seasonal_naive"] = float(np.mean(np.abs(y[targets] - y[targets - bench.season])))
    refs["ar"] = float(np.mean(np.abs(ar_forecasts(bench, targets) - y[targets])))
    return refs


def nearest_neighbour_labels(bench: BenchSet) -> np.ndarray:
    """The 1-NN Euclidean label of each archive test example (nearest of the archive's train examples)."""
    assert bench.x_train is not None and bench.x_test is not None
    train = bench.x_train.reshape(len(bench.x_train), -1)
    test = bench.x_test.reshape(len(bench.x_test), -1)
    distances = (test**2).sum(1)[:, None] - 2 * test @ train.T + (train**2).sum(1)[None, :]
    return np.asarray(bench.y_train)[distances.argmin(axis=1)]


def paired_interval(differences: np.ndarray, samples: int = 4_000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of per-example differences (job − reference):
    both scored on the same resampled test examples, as the service's ``difference_interval``."""
    rng = np.random.default_rng(0)
    means = differences[rng.integers(0, len(differences), size=(samples, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def gap_to_reference(client: httpx.Client, bench: BenchSet, job: dict[str, Any], test_windows: int) -> Any:
    """The job's paired 95% interval against the strongest reference (1-NN; the AR for a series):
    per test example, the job's score minus the reference's, from the job's own ``/predict`` on
    the test inputs. None where the bench cannot rebuild the job's test inputs exactly (a
    ``sequences`` layout's variable lengths) or its predictions do not reproduce the job's test metric."""
    if bench.task == "classification":
        if bench.data["layout"] != "wide":
            return None
        # The test rows as uploaded (values written with 6 significant digits, labels as "c<class>").
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(io.BytesIO(bench.content))
        test = table.filter(pc.equal(table["split"], "test"))
        steps = [name for name in test.column_names if name not in ("label", "split")]
        inputs = np.stack([test[name].to_numpy() for name in steps], axis=1)[:, :, None]
        truth = np.asarray(test["label"].to_pylist()).astype(str)
        body = {"inputs": inputs.tolist()}
        labels = checked(client.post(f"/api/v1/jobs/{job['id']}/predict", json=body))["predictions"]["labels"]
        job_score = (np.asarray(labels).astype(str) == truth).astype(float)
        reference = (np.char.add("c", nearest_neighbour_labels(bench).astype(str)) == truth).astype(float)
    else:
        assert bench.series is not None
        y = bench.series
        lookback = int(bench.data["lookback"])
        targets = test_targets(bench, test_windows)
        body = {"inputs": [[[float(v)] for v in y[t - lookback : t]] for t in targets]}
        predicted = np.asarray(checked(client.post(f"/api/v1/jobs/{job['id']}/predict", json=body))["predictions"])
        job_score = np.abs(predicted.reshape(len(targets), -1)[:, 0] - y[targets])
        reference = np.abs(ar_forecasts(bench, targets) - y[targets])
    if not np.isclose(job_score.mean(), test_value(job, bench.metric), rtol=1e-4, atol=1e-6):
        return None
    return paired_interval(job_score - reference)


# ---------------------------------------------------------------- the service, as a client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    base_url: str
    key: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_service(home: Path, concurrency: int) -> Service:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")},
        "RNNLAB_HOME": str(home),
        "RNNLAB_PORT": str(port),
        "RNNLAB_WORKER_CONCURRENCY": str(concurrency),
        "RNNLAB_TORCH_THREADS": "1",
    }
    py = [sys.executable, "-m", "app.cli"]
    subprocess.run([*py, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*py, "keys", "create", "--project", "quality"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    log = home / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*py, "up"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(f"http://127.0.0.1:{port}", key, process, log)
    with service.client() as client:
        for _ in range(600):
            try:
                if client.get("/readyz").status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.2)
    service.stop()
    raise SystemExit(f"the service did not start; see {log}")


def checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


def default_spec(bench: BenchSet, dataset_id: str, cell: str, seed: int) -> dict[str, Any]:
    """What a new user writes: the data, the task, the cell and the seed; nothing else."""
    return {
        "name": f"{bench.name} default {cell} seed {seed}",
        "dataset_id": dataset_id,
        "task": bench.task,
        "data": bench.data,
        "model": {"cell": cell},
        "training": {"seed": seed},
        "evaluation": {"bootstrap_samples": 200, "attribution": False},
    }


@dataclass
class Submitted:
    bench: BenchSet
    dataset_id: str
    default_jobs: list[str] = field(default_factory=list)
    sweep_id: str | None = None


def submit(client: httpx.Client, bench: BenchSet, seeds: list[int], sweep_seeds: list[int]) -> Submitted:
    dataset = checked(client.post("/api/v1/datasets", files={"file": (bench.filename, bench.content, "text/csv")}))
    submitted = Submitted(bench, dataset["id"])
    for seed in seeds:
        for cell in CELLS:
            job = checked(client.post("/api/v1/jobs", json=default_spec(bench, dataset["id"], cell, seed)))
            submitted.default_jobs.append(job["id"])
    if sweep_seeds:
        base = default_spec(bench, dataset["id"], "lstm", 0)
        base.pop("training")
        body = {"name": f"{bench.name} sweep", "base": base, "grid": SWEEPS[bench.task], "seeds": sweep_seeds}
        submitted.sweep_id = checked(client.post("/api/v1/sweeps", json=body))["id"]
    return submitted


def wait_for(client: httpx.Client, job_ids: list[str]) -> list[dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    while len(jobs) < len(job_ids):
        for job_id in job_ids:
            if job_id not in jobs:
                job = checked(client.get(f"/api/v1/jobs/{job_id}"))
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    if job["status"] != "succeeded":
                        raise SystemExit(f"job {job_id} ({job['name']}) {job['status']}: {job.get('error')}")
                    jobs[job_id] = job
        if len(jobs) < len(job_ids):
            time.sleep(2)
    return [jobs[j] for j in job_ids]


def sweep_jobs(client: httpx.Client, sweep_id: str) -> list[str]:
    page = checked(client.get("/api/v1/jobs", params={"sweep_id": sweep_id, "limit": 500}))
    return [job["id"] for job in page["items"]]


# ---------------------------------------------------------------- scoring


@dataclass
class Row:
    name: str
    metric: str
    defaults: list[float]
    best_setting: str
    best_mean: float
    references: dict[str, float]
    settings_seen: str
    collapsed: int
    # Per default run: the paired 95% interval of (run − strongest reference), or None (see gap_to_reference).
    gaps: list[tuple[float, float] | None] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def beats_references(self) -> bool:
        if self.higher_is_better:
            return all(v > ref for v in self.defaults for ref in self.references.values())
        return all(v < ref for v in self.defaults for ref in self.references.values())

    def near_best(self) -> bool:
        mean = statistics.mean(self.defaults)
        if self.higher_is_better:
            return mean >= self.best_mean - ACCURACY_TOLERANCE
        return mean <= self.best_mean * (1 + MAE_TOLERANCE)

    def passes(self) -> bool:
        return self.beats_references() and self.near_best()


def test_value(job: dict[str, Any], metric: str) -> float:
    return float(job["summary"]["test"][metric])


def score(client: httpx.Client, submitted: Submitted) -> Row:
    bench = submitted.bench
    defaults = wait_for(client, submitted.default_jobs)
    values = [test_value(job, bench.metric) for job in defaults]
    collapsed, test_windows = 0, 0
    for job in defaults:
        evaluation = checked(client.get(f"/api/v1/jobs/{job['id']}/evaluation"))
        collapsed += any("never moved" in note for note in evaluation.get("notes", []))
        test_windows = int(evaluation["num_examples"]["test"])
    by_setting: dict[str, list[float]] = {}
    if submitted.sweep_id is not None:
        for job in wait_for(client, sweep_jobs(client, submitted.sweep_id)):
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted((job["setting"] or {}).items()))
            by_setting.setdefault(label, []).append(test_value(job, bench.metric))
    means = {label: statistics.mean(v) for label, v in by_setting.items()}
    pick = max if bench.metric == "accuracy" else min
    best = pick(means, key=lambda label: means[label]) if means else "-"
    if bench.task == "classification":
        references = {"1nn_euclidean": nearest_neighbour_accuracy(bench)}
    else:
        references = forecast_references(bench, test_windows)
    gaps = [gap_to_reference(client, bench, job, test_windows) for job in defaults]
    resolved = defaults[0]["spec"]
    settings_seen = (
        f"batch {resolved['training']['batch_size']}, epochs {resolved['training']['epochs']}, "
        f"scaling {resolved['data']['scaling']}, schedule {resolved['training']['schedule']}, "
        f"pooling {resolved['model']['pooling']}, patch {resolved['model']['patch']}, "
        f"residual {resolved['model']['residual']}, differences {str(resolved['model']['differences']).lower()}, "
        f"mixup {resolved['training']['mixup']:g}, ensemble {resolved['model'].get('ensemble', 1)}, "
        f"refit {str(resolved['training'].get('refit', False)).lower()}"
    )
    return Row(
        bench.name,
        bench.metric,
        values,
        best,
        means.get(best, float("nan")),
        references,
        settings_seen,
        collapsed,
        gaps,
    )


def format_row(row: Row) -> str:
    digits = 3 if row.metric == "accuracy" else 2
    refs = ", ".join(f"{k} {v:.{digits}f}" for k, v in row.references.items())
    mean, std = statistics.mean(row.defaults), statistics.pstdev(row.defaults)
    worst = min(row.defaults) if row.higher_is_better else max(row.defaults)
    verdict = "pass" if row.passes() else ("below reference" if not row.beats_references() else "far from best")
    return (
        f"| {row.name} | {row.metric} | {mean:.{digits}f} ± {std:.{digits}f} | {worst:.{digits}f} | "
        f"{row.best_mean:.{digits}f} ({row.best_setting}) | {refs} | {verdict} |"
    )


def format_gaps(row: Row) -> str | None:
    """How far the test set can tell the default runs from the strongest reference: each run's paired
    interval, and how many hold 0 (a lead or a gap within resampling noise)."""
    known = [g for g in row.gaps if g is not None]
    if not known:
        return None
    reference = "1nn_euclidean" if row.higher_is_better else "ar"
    digits = 3 if row.higher_is_better else 2
    inside = sum(low <= 0 <= high for low, high in known)
    intervals = " ".join(f"[{low:+.{digits}f}, {high:+.{digits}f}]" for low, high in known)
    return (
        f"{row.name}: run − {reference}, paired 95% intervals on the test examples: {intervals}; "
        f"{inside} of {len(known)} hold 0"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=None, help="data set names (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default-spec jobs")
    parser.add_argument("--sweep-seeds", type=int, default=2, help="seeds of each swept setting")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs the worker runs at a time")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    # ``kill`` (SIGTERM) unwinds like Ctrl-C, so the service and its worker processes are stopped
    # with the run instead of training on as orphans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.perf_counter()
    sets = bench_sets(args.sets)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="rnnlab-quality-") as tmp:
        service = start_service(Path(tmp), args.concurrency)
        try:
            with service.client() as client:
                sweep_seeds = [] if args.no_sweep else list(range(args.sweep_seeds))
                submitted = [submit(client, bench, seeds, sweep_seeds) for bench in sets]
                rows = []
                for item in submitted:
                    rows.append(score(client, item))
                    # Row by row as data sets finish, so a long run shows its progress.
                    took = time.perf_counter() - started
                    print(f"{format_row(rows[-1])}  ({took:.0f} s)", file=sys.stderr, flush=True)
        except BaseException:
            # The temporary home goes away with the run: keep the service's log to see what happened.
            kept = ROOT / ".bench" / "quality-service.log"
            kept.parent.mkdir(exist_ok=True)
            kept.write_bytes(service.log.read_bytes())
            print(f"the run failed; the service's log is in {kept}", file=sys.stderr)
            raise
        finally:
            service.stop()
    print("| data set | metric | default mean ± std | worst default | best swept (setting) | reference | verdict |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(format_row(row))
    print()
    for row in rows:
        print(f"{row.name}: defaults resolved to {row.settings_seen} (lstm seed 0)")
        gaps = format_gaps(row)
        if gaps:
            print(gaps)
        if row.collapsed:
            print(f"{row.name}: {row.collapsed} default run(s) noted a training loss that never moved")
    print(f"wall time {time.perf_counter() - started:.0f} s, worker concurrency {args.concurrency}")
    passed = sum(row.passes() for row in rows)
    print(
        f"quality: {passed}/{len(rows)} data sets where every default run beats the baselines and sits within "
        "3 points (10% MAE) of the best swept setting"
    )


if __name__ == "__main__":
    main()
