"""Read latency at scale: N jobs × E epochs, on SQLite and on PostgreSQL, through the real API.

Seeding: R real jobs go through the service (uploaded dataset, POST /jobs, then the worker's own
`run_job`: per-epoch writes, evaluation, final values), then the database grows to N jobs by SQL
clones of those rows with varied values (each clone scales its source's metrics by its own factor):
the clone map is loaded with COPY (PostgreSQL) or one executemany (SQLite), and the rows are copied
by INSERT … SELECT inside the database.

Measured against `rnnlab api` with its default number of processes, one request at a time
(p50/p95 over --requests): status, one history, all of a job's metrics, 10 jobs' histories, newest
50, filter + sort 50, and page 100 of a filtered sort (with page 1 of it as the in-run reference:
keyset pages cost the same wherever they are); then status req/s at 16 connections (wrk if
installed, else a Python load generator; the median of --load-runs runs, each printed with the API
processes' CPU per request, which a busy machine moves less than req/s); and the JSON encoding of a
10-job history with json, orjson and pydantic (what FastAPI uses).

    python bench/queries.py --backend sqlite --jobs 10000
    python bench/queries.py --backend postgres --jobs 100000 [--postgres URL]

Last line: `queries at N jobs: worst p50 X ms, worst p95 Y ms, status Z req/s`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sine_csv(n: int = 400) -> bytes:
    rng = np.random.default_rng(0)
    values = np.sin(2 * np.pi * np.arange(n) / 25) + 0.05 * rng.standard_normal(n)
    return ("t,value\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(values))).encode()


class Api:
    """`rnnlab api` in a subprocess (its default process count unless told)."""

    def __init__(self, env: dict[str, str], extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full = {**env, **(extra or {}), "RNNLAB_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api"],
            cwd=ROOT,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the API did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def seed_real_jobs(api: Api, headers: dict[str, str], count: int, epochs: int) -> list[str]:
    """Real jobs through the service: POST /jobs, then the worker's run_job in this process."""
    from worker.runner import run_job

    ds = httpx.post(
        f"{api.base}/api/v1/datasets", headers=headers, files={"file": ("sine.csv", sine_csv(), "text/csv")}
    ).json()
    ids = []
    for i in range(count):
        spec = {
            "name": f"real-{i}",
            "dataset_id": ds["id"],
            "task": "forecast",
            "data": {"layout": "series", "target": "value", "lookback": 12},
            "model": {"cell": ("rnn", "lstm", "gru")[i % 3], "hidden_size": 8},
            "training": {"epochs": epochs, "batch_size": 64, "seed": i, "early_stopping_patience": None},
            "evaluation": {"bootstrap_samples": 20, "attribution": False},
        }
        r = httpx.post(f"{api.base}/api/v1/jobs", headers=headers, json=spec)
        r.raise_for_status()
        ids.append(r.json()["id"])
        assert run_job(ids[-1]) == "succeeded", f"real job {ids[-1]} did not succeed"
    return ids


def clone_jobs(real_ids: list[str], total: int, backend: str, batch: int) -> None:
    """Grow to ``total`` jobs: jobs, epoch metrics and final values copied in SQL with varied values."""
    import sqlalchemy as sa

    from app.db import get_engine
    from app.models import EpochMetric, Job, JobMetric

    engine = get_engine()
    clones = sa.Table(
        "bench_clones",
        sa.MetaData(),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("src", sa.String(32)),
        sa.Column("dst", sa.String(32)),
        sa.Column("factor", sa.Float),
        sa.Column("created_at", sa.String(40)),
    )
    clones.drop(engine, checkfirst=True)
    clones.create(engine)
    rng = random.Random(0)
    start = datetime.now(UTC) - timedelta(days=30)
    rows = []
    for seq in range(total - len(real_ids)):
        moment = start + timedelta(seconds=seq * 2, microseconds=rng.randrange(1, 1_000_000))
        # SQLite keeps UTC times as naive text; PostgreSQL takes them with their zone.
        stamp = moment.replace(tzinfo=None).isoformat(" ") if backend == "sqlite" else moment.isoformat()
        rows.append((seq, real_ids[seq % len(real_ids)], uuid.uuid4().hex, rng.uniform(0.6, 1.4), stamp))
    with engine.begin() as conn:
        if backend == "postgres":
            raw = conn.connection.driver_connection
            with raw.cursor().copy("COPY bench_clones (seq, src, dst, factor, created_at) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            conn.connection.driver_connection.executemany("INSERT INTO bench_clones VALUES (?, ?, ?, ?, ?)", rows)
        conn.exec_driver_sql("ANALYZE bench_clones")  # so the planner joins from the clones, batch by batch
    # The real jobs' epoch rows, copied aside: clones read them from a small table, so PostgreSQL can
    # load epoch_metrics without its primary key and build the key once at the end (bulk-load style).
    sources = sa.Table(
        "bench_source_epochs",
        sa.MetaData(),
        *(sa.Column(c.name, c.type) for c in EpochMetric.__table__.columns),
        sa.Index("ix_bench_source_epochs_job", "job_id"),
    )
    sources.drop(engine, checkfirst=True)
    sources.create(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(sources).from_select(list(sources.c.keys()), sa.select(EpochMetric.__table__)))
        if backend == "postgres":
            conn.exec_driver_sql("ANALYZE bench_source_epochs")
            conn.exec_driver_sql("ALTER TABLE epoch_metrics DROP CONSTRAINT pk_epoch_metrics")
    job_columns = [c.name for c in Job.__table__.columns]
    created = sa.cast(clones.c.created_at, Job.created_at.type) if backend == "postgres" else clones.c.created_at
    replaced: dict[str, Any] = {
        "id": clones.c.dst,
        "name": Job.name + "-" + sa.cast(clones.c.seq, sa.String),
        "created_at": created,
        "started_at": created,
        "finished_at": created,
        "artifact_key": sa.null(),
    }
    done = 0
    for low in range(0, len(rows), batch):
        in_batch = clones.c.seq.between(low, low + batch - 1)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(Job).from_select(
                    job_columns,
                    sa.select(*[replaced.get(c, Job.__table__.c[c]) for c in job_columns])
                    .select_from(clones)
                    .join(Job, Job.id == clones.c.src)
                    .where(in_batch),
                )
            )
            conn.execute(
                sa.insert(EpochMetric).from_select(
                    ["job_id", "epoch", "split", "name", "value"],
                    sa.select(
                        clones.c.dst,
                        sources.c.epoch,
                        sources.c.split,
                        sources.c.name,
                        sources.c.value * clones.c.factor,
                    )
                    .select_from(clones)
                    .join(sources, sources.c.job_id == clones.c.src)
                    .where(in_batch),
                )
            )
            conn.execute(
                sa.insert(JobMetric).from_select(
                    ["job_id", "project_id", "split", "name", "value"],
                    sa.select(
                        clones.c.dst,
                        JobMetric.project_id,
                        JobMetric.split,
                        JobMetric.name,
                        JobMetric.value * clones.c.factor,
                    )
                    .select_from(clones)
                    .join(JobMetric, JobMetric.job_id == clones.c.src)
                    .where(in_batch),
                )
            )
        done = min(low + batch, len(rows))
        print(
            f"  cloned {done + len(real_ids)} / {total} jobs at {time.strftime('%H:%M:%S')}",
            file=sys.stderr,
            flush=True,
        )
    clones.drop(engine)
    sources.drop(engine)
    if backend == "postgres":
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "ALTER TABLE epoch_metrics ADD CONSTRAINT pk_epoch_metrics PRIMARY KEY (job_id, epoch, split, name)"
            )
        print(f"  epoch_metrics primary key built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")  # what autovacuum does on a live server


def timed(client: httpx.Client, url: str, requests: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        client.get(url).raise_for_status()
    out = []
    for _ in range(requests):
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def timed_many(client: httpx.Client, urls: list[str], warmup: int = 20) -> list[float]:
    for url in urls[:warmup]:
        client.get(url).raise_for_status()
    out = []
    for url in urls:
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return out


def requests_per_second(url: str, headers: dict[str, str], seconds: int) -> tuple[float, str]:
    """Status req/s at 16 connections: wrk when installed, else 16 Python threads."""
    if shutil.which("wrk"):
        header = next(iter(headers.items()))
        out = subprocess.run(
            ["wrk", "-t2", "-c16", f"-d{seconds}s", "-H", f"{header[0]}: {header[1]}", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise SystemExit(f"wrk saw {errors.group(1)} failed responses")
        return float(match.group(1)) if match else 0.0, "wrk -t2 -c16"
    count = [0]
    stop = time.monotonic() + seconds

    def load() -> None:
        with httpx.Client(headers=headers) as client:
            while time.monotonic() < stop:
                client.get(url).raise_for_status()
                count[0] += 1

    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / seconds, "16 Python threads"


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children, from /proc (0 where there is none)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{current}/task/{current}/children") as f:
                pending += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return total


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def json_encoding(payload: Any, repeat: int = 200) -> dict[str, float]:
    import orjson
    from pydantic import TypeAdapter

    adapter = TypeAdapter(dict[str, Any])
    encoders = {
        "json": lambda: json.dumps(payload).encode(),
        "orjson": lambda: orjson.dumps(payload),
        "pydantic": lambda: adapter.dump_json(payload),
    }
    out = {}
    for name, encode in encoders.items():
        encode()
        t = time.perf_counter()
        for _ in range(repeat):
            encode()
        out[name] = (time.perf_counter() - t) / repeat * 1000
    return out


def database_bytes(backend: str, env: dict[str, str]) -> int:
    import sqlalchemy as sa

    from app.db import get_engine

    if backend == "sqlite":
        return sum(p.stat().st_size for p in Path(env["RNNLAB_HOME"]).glob("rnnlab.db*"))
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--real", type=int, default=20, help="real jobs trained through the service")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load-seconds", type=int, default=10)
    parser.add_argument("--load-runs", type=int, default=3, help="wrk runs for status req/s; the median is printed")
    parser.add_argument("--batch", type=int, default=10_000, help="clones per INSERT … SELECT")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--page", type=int, default=100, help="the deep page of the filtered sort")
    parser.add_argument("--keep", action="store_true", help="keep the database (SQLite file or schema)")
    parser.add_argument("--no-gc-freeze", action="store_true", help="measure with gc.freeze() off")
    parser.add_argument(
        "--reuse",
        metavar="KEPT",
        help="measure a database an earlier --keep run seeded (the folder or schema it printed); no seeding",
    )
    args = parser.parse_args()
    if args.reuse:
        args.keep = True

    tmp = (
        Path(args.reuse)
        if args.reuse and args.backend == "sqlite"
        else Path(tempfile.mkdtemp(prefix="rnnlab-bench-queries-"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    # No per-key rate limit: the bench measures the read path at full speed from one key.
    env.update({"RNNLAB_HOME": str(tmp / "home"), "RNNLAB_TORCH_THREADS": "1", "RNNLAB_RATE_LIMIT": ""})
    schema = None
    if args.backend == "postgres":
        import sqlalchemy as sa

        schema = args.reuse or f"bench_queries_{os.getpid()}"
        if not args.reuse:
            admin = sa.create_engine(args.postgres)
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in args.postgres else "?"
        env["RNNLAB_DATABASE_URL"] = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
    os.environ.update(env)
    if args.no_gc_freeze:
        env["RNNLAB_GC_FREEZE"] = "false"

    import torch

    from app.cli import default_api_workers
    from app.migrate import upgrade_database

    torch.set_num_threads(1)
    api: Api | None = None
    try:
        upgrade_database()
        key = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--project", "bench"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {key}"}
        api = Api(env)
        workers = default_api_workers()
        print(f"backend {args.backend}, API processes {workers} (default for this machine)")

        real_seconds = clone_seconds = 0.0
        if not args.reuse:
            t = time.perf_counter()
            real_ids = seed_real_jobs(api, headers, args.real, args.epochs)
            real_seconds = time.perf_counter() - t
            t = time.perf_counter()
            clone_jobs(real_ids, args.jobs, args.backend, args.batch)
            clone_seconds = time.perf_counter() - t
        import sqlalchemy as sa

        from app.db import get_engine

        with get_engine().connect() as conn:
            epoch_rows = conn.execute(sa.text("SELECT count(*) FROM epoch_metrics")).scalar_one()
            job_ids = list(conn.execute(sa.text("SELECT id FROM jobs")).scalars())
            median_rmse = (
                conn.execute(
                    sa.text("SELECT value FROM job_metrics WHERE split = 'test' AND name = 'rmse' ORDER BY value")
                )
                .scalars()
                .all()[len(job_ids) // 2]
            )
        size = database_bytes(args.backend, env)
        if args.reuse:
            print(f"reused {args.reuse}: {len(job_ids)} jobs, {epoch_rows} epoch rows, {size / 1e6:.0f} MB")
        else:
            print(
                f"seeded {len(job_ids)} jobs, {epoch_rows} epoch rows, {size / 1e6:.0f} MB: {args.real} real jobs × "
                f"{args.epochs} epochs in {real_seconds:.1f} s, clones in {clone_seconds:.1f} s"
            )
        api.stop()  # a fresh API: nothing cached from seeding
        api = Api(env)

        rng = random.Random(1)
        base = f"{api.base}/api/v1"
        sample = [rng.choice(job_ids) for _ in range(args.requests)]
        results: dict[str, list[float]] = {}
        filtered = f'where=test.rmse < {median_rmse} and model.cell in ("lstm", "gru")&sort=best.val.loss'
        paged = 'where=model.cell in ("lstm", "gru")&sort=-test.rmse'
        with httpx.Client(headers=headers, timeout=60) as client:
            results["status"] = timed_many(client, [f"{base}/jobs/{j}" for j in sample])
            results["one history"] = timed_many(client, [f"{base}/metrics?job_id={j}&name=val.loss" for j in sample])
            results["all metrics of a job"] = timed_many(client, [f"{base}/jobs/{j}/metrics" for j in sample])
            tens = ["&".join(f"job_id={j}" for j in rng.sample(job_ids, 10)) for _ in range(args.requests)]
            results["10 jobs' histories"] = timed_many(client, [f"{base}/metrics?{q}" for q in tens])
            results["newest 50"] = timed(client, f"{base}/jobs?limit=50", args.requests)
            results["filter + sort 50"] = timed(client, f"{base}/jobs?limit=50&{filtered}", args.requests)
            cursor = None
            for _ in range(args.page - 1):  # walk to the deep page (not timed)
                page = client.get(f"{base}/jobs?limit=50&{paged}" + (f"&cursor={cursor}" if cursor else "")).json()
                cursor = page["next_cursor"]
                if cursor is None:
                    raise SystemExit(f"the filtered sort has fewer than {args.page} pages at {len(job_ids)} jobs")
            page1 = timed(client, f"{base}/jobs?limit=50&{paged}", args.requests)
            results[f"page {args.page} of a filtered sort"] = timed(
                client, f"{base}/jobs?limit=50&{paged}&cursor={cursor}", args.requests
            )
            payload = client.get(f"{base}/metrics?{tens[0]}").json()
        print(f"{'query':<30}{'p50 ms':>9}{'p95 ms':>9}{'p95/p50':>9}")
        for name, times in results.items():
            p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
            print(f"{name:<30}{p50:>9.2f}{p95:>9.2f}{p95 / p50:>9.2f}")
        p100 = float(np.percentile(results[f"page {args.page} of a filtered sort"], 50))
        print(
            f"page {args.page} vs page 1 of the filtered sort: {p100:.2f} vs {np.percentile(page1, 50):.2f} ms p50 "
            f"(ratio {p100 / np.percentile(page1, 50):.2f})"
        )
        runs = []
        for _ in range(args.load_runs):
            cpu_before = process_tree_cpu(api.proc.pid)
            rate, how = requests_per_second(f"{base}/jobs/{job_ids[0]}", headers, args.load_seconds)
            cpu_us = (process_tree_cpu(api.proc.pid) - cpu_before) / max(rate * args.load_seconds, 1) * 1e6
            runs.append(rate)
            print(f"  status load run: {rate:.0f} req/s, API CPU {cpu_us:.0f} µs per request; load {load_average()}")
        rate = float(np.median(runs))
        print(
            f"status at 16 connections: {rate:.0f} req/s ({how}, {workers} API processes"
            f"{f', median of {len(runs)} runs' if len(runs) > 1 else ''})"
        )
        encoding = json_encoding(payload)
        print(
            "JSON of a 10-job history ({:.0f} kB): json {:.3f} ms, orjson {:.3f} ms, pydantic {:.3f} ms "
            "(pydantic/orjson {:.2f})".format(
                len(json.dumps(payload)) / 1000,
                encoding["json"],
                encoding["orjson"],
                encoding["pydantic"],
                encoding["pydantic"] / encoding["orjson"],
            )
        )
        worst50 = max(float(np.percentile(t, 50)) for t in results.values())
        worst95 = max(float(np.percentile(t, 95)) for t in results.values())
        print(
            f"queries at {len(job_ids)} jobs: worst p50 {worst50:.1f} ms, worst p95 {worst95:.1f} ms, "
            f"status {rate:.0f} req/s"
        )
    finally:
        if api is not None:
            api.stop()
        from app.db import reset_engine

        reset_engine()
        if args.keep:
            print(f"kept: --reuse {schema or tmp}", file=sys.stderr)
        else:
            if schema is not None:
                import sqlalchemy as sa

                admin = sa.create_engine(args.postgres)
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
