"""Hostile requests against the real API: status, latency and the server's peak memory, per case.

Serves rnnlab with uvicorn in a subprocess (a fresh RNNLAB_HOME on SQLite, auth on, no worker) and
sends the requests of issue 14 one case at a time. Before each case the server's peak-RSS counter
is reset (``/proc/PID/clear_refs``), so "peak" is that case's own peak over the resident memory
before it. Each line ends with the goal it is held to; the first lines are normal requests, the
reference measured in the same run.

    .venv/bin/python bench/abuse.py
    .venv/bin/python bench/abuse.py --streams 1000   # more open event streams (20 per key)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
                opened += 1
                async for _ in response.aiter_bytes():
                    if stop.is_set():
                        return

    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(hold(client, keys[i // STREAMS_PER_KEY])) for i in range(streams)]
        await asyncio.sleep(3 + streams / 100)
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
    result = {"opened": float(opened)}
    for name, values in timings.items():
        values.sort()
        result[f"{name}_p50"] = statistics.median(values)
        result[f"{name}_p99"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="event streams to hold open (default 200)")
    parser.add_argument("--slowloris", type=int, default=300, help="stalled uploads to open (default 300)")
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    workdir = Path(tempfile.mkdtemp(prefix="rnnlab-abuse-"))
    server_proc: subprocess.Popen[bytes] | None = None
    body_timeout_s = 5.0
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
        env.update(RNNLAB_HOME=str(workdir / "home"), RNNLAB_BODY_READ_TIMEOUT_SECONDS=str(body_timeout_s))
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=root, env=env, check=True)
        keys = []
        for _ in range(max(2, -(-args.streams // STREAMS_PER_KEY) + 1)):
            out = subprocess.run(
                [sys.executable, "-m", "app.cli", "keys", "create", "--project", "abuse"],
                cwd=root,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            keys.append(out.stdout.strip())
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

        before = server.reset_peak()
        result = asyncio.run(stream_load(base, keys, state["job"], args.streams, probes=100))
        extra = memory_mib(server.pid, "VmHWM") - before
        print(
            f"{args.streams} open event streams ({int(result['opened'])} opened): /healthz p50 "
            f"{result['healthz_p50']:.0f} ms p99 {result['healthz_p99']:.0f} ms; GET /jobs/{{id}} p50 "
            f"{result['job_p50']:.0f} ms p99 {result['job_p99']:.0f} ms; peak +{extra:.0f} MB  "
            f"goal: p99 < 200 ms  {'ok' if max(result['healthz_p99'], result['job_p99']) < 200 else 'OVER'}"
        )
        http.close()
        return 0
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
