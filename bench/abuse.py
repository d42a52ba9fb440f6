"""Hostile requests against the real API: status, latency and the server's peak memory, per case.

Serves rnnlab with uvicorn in a subprocess (a fresh RNNLAB_HOME on SQLite, auth on, no worker) and
sends hostile requests (very wide CSVs, oversized bodies, compression bombs, stalled bodies) one case
at a time. Before each case the server's peak-RSS counter
is reset (``/proc/PID/clear_refs``), so "peak" is that case's own peak over the resident memory
before it. Each line ends with the goal it is held to; the first lines are normal requests, the
reference measured in the same run.

    .venv/bin/python bench/abuse.py
    .venv/bin/python bench/abuse.py --streams 1000   # more open event streams (20 per key)
    .venv/bin/python bench/abuse.py --only fairness  # just the fair-scheduling case
    .venv/bin/python bench/abuse.py --only streams --streams 1000  # just the event-stream case

The fair-scheduling case runs its own API and two real worker processes: project A queues a 100-job
sweep, project B then submits one job, and B's wait (submitted → started) is compared with one job's
duration (the median of A's jobs), first with the fair dispatcher, then with every job sent to the
broker at once as before (``RNNLAB_DISPATCH_IN_FLIGHT`` set to 100,000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from upload_memory import free_port, memory_mib, wait_ready

MIB = 1024 * 1024
GOAL_SECONDS = 2.0
GOAL_EXTRA_MIB = 256.0
STREAMS_PER_KEY = 20  # RNNLAB_MAX_EVENT_STREAMS_PER_KEY's default


class Server:
    def __init__(self, pid: int, base_url: str) -> None:
        self.pid = pid
        self.base_url = base_url

    def reset_peak(self) -> float:
        with contextlib.suppress(OSError):  # not permitted: the peak then covers the run so far
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return memory_mib(self.pid, "VmRSS")


def report(
    server: Server,
    label: str,
    action: Callable[[], tuple[int | str, str]],
    limit: str,
    requests: int = 1,
    held_open: bool = False,
) -> None:
    """One line per case; a case of several requests (``requests``) is held to the goal per request.

    ``held_open``: the case waits on purpose (stalled clients), so its time is not a latency; it
    passes when the server closed every connection (status ``n/n``).
    """
    before = server.reset_peak()
    start = time.perf_counter()
    status, note = action()
    seconds = (time.perf_counter() - start) / requests
    extra = memory_mib(server.pid, "VmHWM") - before
    ok = seconds <= GOAL_SECONDS and extra <= GOAL_EXTRA_MIB
    if held_open:
        done, _, total = str(status).partition("/")
        ok = done == total and extra <= GOAL_EXTRA_MIB
    print(
        f"{label:<44} status {status!s:<8} {seconds:7.2f} s  peak +{extra:6.0f} MB  "
        f"{'ok ' if ok else 'OVER'}  limit: {limit}{'  (' + note + ')' if note else ''}",
        flush=True,
    )


def csv_wide(columns: int, rows: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    row = ",".join("1" for _ in range(columns))
    return (header + "\n" + "\n".join(row for _ in range(rows)) + "\n").encode()


def csv_late_strings(columns: int, target_bytes: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    row = ",".join(str(i % 10) for i in range(columns))
    rows = max(1, target_bytes // (len(row) + 1))
    last = ",".join("word" for _ in range(columns))
    return (header + "\n" + "\n".join(row for _ in range(rows)) + "\n" + last + "\n").encode()


def gzip_bomb(expanded_bytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    line = b"0\n" * (512 * 1024)
    parts = [compressor.compress(b"a\n")]
    for _ in range(expanded_bytes // len(line)):
        parts.append(compressor.compress(line))
    parts.append(compressor.flush())
    return b"".join(parts)


def parquet_bomb(rows: int, value_bytes: int) -> bytes:
    """A few KB of Parquet whose text column is one long value repeated ``rows`` times (dictionary
    encoded: one copy stored), decoding to ``rows * value_bytes`` bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = pa.array(["a" * value_bytes])
    table = pa.table(
        {
            "y": pa.array(range(rows), pa.float64()),
            "s": pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), value),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", store_schema=False)
    return sink.getvalue()


def slowloris(base_url: str, connections: int, wait_s: float) -> tuple[int, int]:
    """Open connections that announce a body and send 10 bytes of it; count those answered/closed."""
    host, port = base_url.removeprefix("http://").split(":")
    socks = []
    for _ in range(connections):
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"name": 1'
        )
        s.settimeout(0.05)
        socks.append(s)
    time.sleep(wait_s)
    closed = answered_408 = 0
    for s in socks:
        try:
            data = s.recv(4096)
            closed += 1
            answered_408 += b" 408 " in data[:20]
        except OSError:
            pass
        s.close()
    return closed, answered_408


async def stream_load(base_url: str, keys: list[str], job_id: str, streams: int, probes: int) -> dict[str, float]:
    """Hold ``streams`` event streams open and time other requests meanwhile (p50/p99 ms)."""
    opened = 0
    stop = asyncio.Event()

    async def hold(client: httpx.AsyncClient, key: str) -> None:
        nonlocal opened
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream("GET", f"{base_url}/api/v1/jobs/{job_id}/events", headers=headers) as response:
            if response.status_code == 200:
                counted = False
                async for _ in response.aiter_bytes():
                    if not counted:  # open once its first event arrived (the job's status)
                        opened += 1
                        counted = True
                    if stop.is_set():
                        return

    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(hold(client, keys[i // STREAMS_PER_KEY])) for i in range(streams)]
        # Measure while the streams are open, not while they are opening: wait until every one is
        # (or none more opened for 10 s).
        t_open = time.perf_counter()
        last, last_change = -1, time.perf_counter()
        while opened < streams and time.perf_counter() - last_change < 10:
            if opened != last:
                last, last_change = opened, time.perf_counter()
            await asyncio.sleep(0.2)
        open_seconds = time.perf_counter() - t_open
        await asyncio.sleep(2)
        timings: dict[str, list[float]] = {"healthz": [], "job": []}
        async with httpx.AsyncClient(timeout=60) as probe:
            headers = {"Authorization": f"Bearer {keys[-1]}"}
            for _ in range(probes):
                for name, url in (("healthz", "/healthz"), ("job", f"/api/v1/jobs/{job_id}")):
                    t0 = time.perf_counter()
                    await probe.get(base_url + url, headers=headers)
                    timings[name].append((time.perf_counter() - t0) * 1000)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = {"opened": float(opened), "open_seconds": open_seconds}
    for name, values in timings.items():
        values.sort()
        result[f"{name}_p50"] = statistics.median(values)
        result[f"{name}_p99"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    return result


def streams_case(server: Server, base: str, keys: list[str], job_id: str, streams: int) -> None:
    before = server.reset_peak()
    result = asyncio.run(stream_load(base, keys, job_id, streams, probes=100))
    extra = memory_mib(server.pid, "VmHWM") - before
    print(
        f"{streams} open event streams ({int(result['opened'])} opened in {result['open_seconds']:.1f} s): "
        f"/healthz p50 "
        f"{result['healthz_p50']:.0f} ms p99 {result['healthz_p99']:.0f} ms; GET /jobs/{{id}} p50 "
        f"{result['job_p50']:.0f} ms p99 {result['job_p99']:.0f} ms; peak +{extra:.0f} MB  "
        f"goal: p99 < 200 ms  {'ok' if max(result['healthz_p99'], result['job_p99']) < 200 else 'OVER'}"
    )


def _job_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "task": "forecast",
        "data": {"layout": "series", "target": "value", "lookback": 12},
        "model": {"cell": "gru", "hidden_size": 8},
        "training": {"epochs": 4, "batch_size": 32, "seed": 0},
        "evaluation": {"bootstrap_samples": 20, "attribution": False},
    }


def fairness_run(
    root: Path, workdir: Path, in_flight: int, sweep_jobs: int = 100, samples: int = 5
) -> dict[str, float]:
    """One run: A's sweep queued, then B's job; B's wait and the median job duration, in seconds."""
    home = workdir / f"fair-{in_flight}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update(
        RNNLAB_HOME=str(home),
        RNNLAB_DISPATCH_IN_FLIGHT=str(in_flight),
        RNNLAB_TORCH_THREADS="1",
        RNNLAB_RATE_LIMIT="",
        RNNLAB_EMBEDDED_BROKER_POLL_SECONDS="0.05",
    )
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=root, env=env, check=True)

    def key(project: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--project", project],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    heads = {p: {"Authorization": f"Bearer {key(p)}"} for p in ("a", "b")}
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    log = open(workdir / f"fair-{in_flight}.log", "wb")  # noqa: SIM115 - closed below
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
                + ["--log-level", "warning"],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, procs[0])
        for i in range(2):  # two workers of one slot each, as docker-compose.yml runs them
            argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker"]
            argv += ["--queues", "default", "--concurrency", "1", "--hostname", f"fair{i}@%h"]
            argv += ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]
            procs.append(subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT))
        sine = "t,value\n" + "\n".join(f"{i},{(i % 24) / 24:.4f}" for i in range(400)) + "\n"
        with httpx.Client(base_url=base, timeout=60) as http:
            data = {}
            for p, h in heads.items():
                r = http.post("/api/v1/datasets", headers=h, files={"file": ("sine.csv", sine.encode())})
                data[p] = r.json()["id"]
            sweep = {"base": _job_spec(data["a"]), "seeds": list(range(sweep_jobs)), "max_jobs": sweep_jobs}
            r = http.post("/api/v1/sweeps", headers=heads["a"], json=sweep)
            assert r.status_code == 201, r.text
            sweep_id = r.json()["id"]

            def a_jobs() -> list[dict[str, Any]]:
                url = f"/api/v1/jobs?sweep_id={sweep_id}&limit=200"
                return list(http.get(url, headers=heads["a"]).json()["items"])

            # Let the workers settle into the sweep (two jobs finished) before B arrives.
            deadline = time.monotonic() + 600
            while sum(j["status"] == "succeeded" for j in a_jobs()) < 2:
                assert time.monotonic() < deadline, "project A's jobs do not run; see the log"
                time.sleep(0.2)
            waits: list[float] = []  # B's jobs, one at a time
            for sample in range(samples):
                r = http.post("/api/v1/jobs", headers=heads["b"], json=_job_spec(data["b"]))
                b_id = r.json()["id"]
                submitted = time.monotonic()
                started = None
                while started is None:
                    job = http.get(f"/api/v1/jobs/{b_id}", headers=heads["b"]).json()
                    if job["status"] != "queued":
                        started = time.monotonic() - submitted
                    elif time.monotonic() - submitted > 90:
                        break
                    else:
                        time.sleep(0.05)
                if started is None:
                    break
                waits.append(started)
                if sample == 0:
                    a_started = sum(j["status"] != "queued" for j in a_jobs())
                # B's next job arrives once this one has finished (B has nothing running, A all the
                # workers), at another point of A's jobs.
                while http.get(f"/api/v1/jobs/{b_id}", headers=heads["b"]).json()["status"] in ("queued", "running"):
                    time.sleep(0.1)
                time.sleep(0.37 * (sample + 1))
            waited = time.monotonic() - submitted
            if not waits:
                a_started = sum(j["status"] != "queued" for j in a_jobs())
            # One job's duration: the median of A's jobs once warm (each worker's first job loads
            # torch), over at least 8 of them.
            deadline = time.monotonic() + 300
            while True:
                done = [j for j in a_jobs() if j["status"] == "succeeded" and j.get("finished_at")]
                if len(done) >= 10 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            done.sort(key=lambda j: j["started_at"])
            durations = [
                (datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["started_at"])).total_seconds()
                for j in done[2:]
            ]
            http.post(f"/api/v1/sweeps/{sweep_id}/cancel", headers=heads["a"])
        return {
            "wait": max(waits) if waits else float("inf"),
            "median_wait": statistics.median(waits) if waits else float("inf"),
            "samples": float(len(waits)),
            "waited": waited,
            "duration": statistics.median(durations),
            "a_started": float(a_started),
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def fairness(root: Path, workdir: Path) -> None:
    for in_flight, label in ((1, "fair dispatch (in flight 1)"), (100_000, "all sent at submit (as before)")):
        r = fairness_run(root, workdir, in_flight)
        if r["wait"] == float("inf"):
            wait = f"B's job not started after {r['waited']:.0f} s"
        else:
            wait = (
                f"B's job started after {r['median_wait']:.2f} s median, {r['wait']:.2f} s worst of {r['samples']:.0f}"
            )
        ratio = r["wait"] / r["duration"]
        print(
            f"100-job sweep in A, 2 workers, {label}: {wait} = {ratio:.2f} job durations at worst "
            f"(median job {r['duration']:.2f} s; A had started {r['a_started']:.0f} jobs when B's first "
            f"started)  goal: <= 1 job duration  {'ok' if ratio <= 1 else 'OVER'}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="event streams to hold open (default 200)")
    parser.add_argument("--slowloris", type=int, default=300, help="stalled uploads to open (default 300)")
    parser.add_argument("--only", choices=["fairness", "streams"], help="run only this case")
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    workdir = Path(tempfile.mkdtemp(prefix="rnnlab-abuse-"))
    if args.only == "fairness":
        try:
            fairness(root, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    server_proc: subprocess.Popen[bytes] | None = None
    body_timeout_s = 5.0
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
        env.update(RNNLAB_HOME=str(workdir / "home"), RNNLAB_BODY_READ_TIMEOUT_SECONDS=str(body_timeout_s))
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=root, env=env, check=True)
        count = max(2, -(-args.streams // STREAMS_PER_KEY) + 1)
        script = (
            "import sys\nfrom app.auth import create_key\nfrom app.db import new_session\n"
            "with new_session() as s:\n    for _ in range(int(sys.argv[1])):\n"
            "        print(create_key(s, 'abuse')[0])\n"
        )
        out = subprocess.run(  # in one process: one interpreter start per key takes minutes under load
            [sys.executable, "-c", script, str(count)], cwd=root, env=env, check=True, capture_output=True, text=True
        )
        keys = out.stdout.split()
        port = free_port()
        server_proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
            + ["--log-level", "warning", "--limit-concurrency", "5000"],
            cwd=root,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, server_proc)
        server = Server(server_proc.pid, base)
        auth = {"Authorization": f"Bearer {keys[0]}"}
        http = httpx.Client(base_url=base, timeout=120, headers=auth)
        print(
            f"API pid {server.pid}, idle RSS {memory_mib(server.pid, 'VmRSS'):.0f} MB; goals: each request "
            f"<= {GOAL_SECONDS:g} s and <= +{GOAL_EXTRA_MIB:g} MB"
        )

        sine = "t,value\n" + "\n".join(f"{i},{(i % 24) / 24:.4f}" for i in range(400)) + "\n"
        state: dict[str, Any] = {}

        def normal_upload() -> tuple[int, str]:
            r = http.post("/api/v1/datasets", files={"file": ("sine.csv", sine.encode())})
            state["sine"] = r.json()["id"]
            return r.status_code, ""

        def normal_job() -> tuple[int, str]:
            spec = {
                "dataset_id": state["sine"],
                "task": "forecast",
                "data": {"layout": "series", "target": "value"},
                "training": {"epochs": 2},
            }
            r = http.post("/api/v1/jobs", json=spec)
            state["job"] = r.json()["id"]
            return r.status_code, ""

        report(server, "reference: GET /healthz", lambda: (http.get("/healthz").status_code, ""), "-")
        report(server, "reference: upload a 400-row CSV", normal_upload, "-")
        report(server, "reference: POST /jobs", normal_job, "-")
        if args.only == "streams":
            streams_case(server, base, keys, state["job"], args.streams)
            return 0

        report(
            server, "GET /jobs/%00", lambda: (http.get("/api/v1/jobs/%00").status_code, ""), "400 invalid_characters"
        )
        report(
            server,
            "GET /jobs?sweep_id=a%00b",
            lambda: (http.get("/api/v1/jobs?sweep_id=a%00b").status_code, ""),
            "400 invalid_characters",
        )

        def infinite_clip() -> tuple[int, str]:
            body = json.dumps(
                {"dataset_id": state["sine"], "task": "forecast", "data": {"layout": "series", "target": "value"}}
            ).replace("}}", '}, "training": {"gradient_clip": 1e999}}')
            r = http.post("/api/v1/jobs", content=body, headers={"content-type": "application/json"})
            return r.status_code, r.json()["error"]["code"]

        report(server, "POST /jobs gradient_clip 1e999", infinite_clip, "422 non_finite_number")

        wide = csv_wide(100_000, 1)
        report(
            server,
            f"upload {len(wide) / MIB:.1f} MB CSV, 100,000 columns",
            lambda: (http.post("/api/v1/datasets", files={"file": ("wide.csv", wide)}).status_code, ""),
            "RNNLAB_MAX_COLUMNS=2000 -> 422",
        )

        late = csv_late_strings(500, int(1.2 * MIB))
        report(
            server,
            f"upload {len(late) / MIB:.1f} MB CSV, 500 int cols + string row",
            lambda: (http.post("/api/v1/datasets", files={"file": ("late.csv", late)}).status_code, ""),
            "one widening pass",
        )

        cols2000 = csv_wide(2000, 1000)

        def upload_2000() -> tuple[int, str]:
            r = http.post("/api/v1/datasets", files={"file": ("c2000.csv", cols2000)})
            state["wide"] = r.json().get("id")
            return r.status_code, f"{len(cols2000) / MIB:.1f} MB"

        report(server, "upload CSV with 2000 columns x 1000 rows", upload_2000, "max columns 2000")

        def preview() -> tuple[int, str]:
            r = http.get(f"/api/v1/datasets/{state['wide']}/preview?rows=1000")
            return r.status_code, f"{len(r.json().get('rows') or [])} rows shown, {len(r.content) / MIB:.2f} MB"

        report(server, "preview?rows=1000 of 2000 columns", preview, "RNNLAB_MAX_PREVIEW_CELLS=50000")

        def four_previews() -> tuple[str, str]:
            async def run() -> list[int]:
                async with httpx.AsyncClient(base_url=base, headers=auth, timeout=120) as client:
                    url = f"/api/v1/datasets/{state['wide']}/preview?rows=1000"
                    return [r.status_code for r in await asyncio.gather(*(client.get(url) for _ in range(4)))]

            return "/".join(map(str, asyncio.run(run()))), ""

        report(server, "4 such previews at once", four_previews, "same cap")

        def dataset_list() -> tuple[int, str]:
            r = http.get("/api/v1/datasets?limit=500")
            return r.status_code, f"{len(r.content) / 1024:.1f} KiB"

        report(server, "GET /datasets?limit=500", dataset_list, "column counts, not columns")

        big = json.dumps({"inputs": [[[0.123456789] * 1000] * 50] * 110}).encode()

        def big_json() -> tuple[int, str]:
            r = http.post(
                f"/api/v1/jobs/{state['job']}/predict", content=big, headers={"content-type": "application/json"}
            )
            return r.status_code, f"{len(big) / MIB:.0f} MB body"

        report(server, "POST /predict 50 MB JSON (Content-Length)", big_json, "RNNLAB_MAX_JSON_BODY_BYTES=8 MiB")

        def big_json_chunked() -> tuple[int, str]:
            def chunks() -> Any:
                for i in range(0, len(big), MIB):
                    yield big[i : i + MIB]

            r = http.post(
                f"/api/v1/jobs/{state['job']}/predict", content=chunks(), headers={"content-type": "application/json"}
            )
            return r.status_code, "chunked, no Content-Length"

        report(server, "POST /predict 50 MB JSON (chunked)", big_json_chunked, "413 while reading")

        bomb = gzip_bomb(int(1.1 * 1024**3))

        def gz_bomb() -> tuple[int, str]:
            r = http.post("/api/v1/datasets", files={"file": ("bomb.csv.gz", bomb)})
            return r.status_code, f"{len(bomb) / MIB:.1f} MB -> 1.1 GiB, {r.json()['error']['code']}"

        report(server, "upload .csv.gz expanding to 1.1 GiB", gz_bomb, "RNNLAB_MAX_COMPRESSION_RATIO=100")

        pq_bomb = parquet_bomb(1500, 1024**2)

        def parquet_bomb_case() -> tuple[int, str]:
            r = http.post("/api/v1/datasets", files={"file": ("bomb.parquet", pq_bomb)})
            return r.status_code, f"{len(pq_bomb) / 1024:.1f} KB -> 1.5 GiB decoded, {r.json()['error']['code']}"

        report(server, "upload .parquet decoding to 1.5 GiB", parquet_bomb_case, "RNNLAB_MAX_DECOMPRESSED_BYTES")

        def rate() -> tuple[str, str]:
            responses = [http.get("/api/v1/jobs?limit=1") for _ in range(300)]
            statuses = [r.status_code for r in responses]
            retry = next((r.headers.get("retry-after") for r in responses if r.status_code == 429), None)
            return f"{statuses.count(429)}x429", f"{statuses.count(200)} ok, Retry-After {retry}; time per request"

        report(server, "300 requests back to back, one key", rate, "RNNLAB_RATE_LIMIT=100/second", requests=300)
        time.sleep(1.1)

        def loris() -> tuple[str, str]:
            closed, answered = slowloris(base, args.slowloris, body_timeout_s + 2)
            return f"{closed}/{args.slowloris}", f"{answered} answered 408 within {body_timeout_s + 2:g} s"

        report(
            server,
            f"{args.slowloris} stalled bodies (slowloris)",
            loris,
            f"RNNLAB_BODY_READ_TIMEOUT_SECONDS={body_timeout_s:g}",
            held_open=True,
        )

        streams_case(server, base, keys, state["job"], args.streams)
        http.close()
        server_proc.terminate()
        server_proc.wait(timeout=30)
        server_proc = None
        fairness(root, workdir)
        return 0
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
