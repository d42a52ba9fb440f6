"""The Python client against a scripted server: 429s and Retry-After, reconnecting through an outage
(never past a deadline), a sweep's jobs in pages, API keys with stray whitespace, and the model
format read off a file's suffix."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rnnlab import Client, RnnlabError
from rnnlab.client import RECONNECT_SECONDS, _CountingReader
from tests.client.fake import URL, FakeServer, error, events_response, refused, sse


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    fake.patch_time(monkeypatch)
    return fake


def rate_limited(retry_after: str = "2") -> httpx.Response:
    return error(
        429,
        "rate_limited",
        "rate limit of 10 per 1 second reached",
        {"retry_after_seconds": 2},
        **{"Retry-After": retry_after},
    )


def answers(*responses: httpx.Response) -> Any:
    """A route that answers with ``responses`` in turn, the last one from then on."""
    queue = list(responses)

    def route(request: httpx.Request) -> httpx.Response:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return route


# --- 3. 429: wait Retry-After, a bounded number of times --------------------------------------------


def test_a_429_is_retried_after_its_retry_after(server: FakeServer) -> None:
    server.routes[("GET", "/jobs/j1")] = answers(
        rate_limited("2"), rate_limited("3"), httpx.Response(200, json={"id": "j1", "status": "queued"})
    )
    assert server.client().jobs.get("j1").status == "queued"
    assert server.sleeps == [2.0, 3.0] and len(server.requests) == 3

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)  # the HTTP-date form
    server.routes[("GET", "/jobs/j2")] = answers(
        rate_limited(when), httpx.Response(200, json={"id": "j2", "status": "queued"})
    )
    server.sleeps.clear()
    server.client().jobs.get("j2")
    assert len(server.sleeps) == 1 and 25 <= server.sleeps[0] <= 30


def test_429s_past_the_budget_raise_with_the_retry_after(server: FakeServer) -> None:
    server.routes[("GET", "/jobs/j1")] = rate_limited("50")
    with pytest.raises(RnnlabError) as raised:
        server.client().jobs.get("j1")
    assert raised.value.status_code == 429 and raised.value.code == "rate_limited"
    assert raised.value.retry_after == 50.0
    assert server.sleeps == [50.0, 50.0]  # a third wait would pass max_retry_wait (120 s)
    server.sleeps.clear()
    http = httpx.Client(base_url=URL, transport=httpx.MockTransport(server.handle))
    with pytest.raises(RnnlabError):
        Client(URL, "k", http=http, max_retry_wait=0).jobs.get("j1")
    assert server.sleeps == []


def test_a_rate_limited_upload_is_sent_again_from_the_start(server: FakeServer, tmp_path: Path) -> None:
    bodies: list[bytes] = []

    def upload(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            return rate_limited("1")
        return httpx.Response(201, json={"id": "d1"})

    server.routes[("POST", "/datasets")] = upload
    data = tmp_path / "sine.csv"
    data.write_text("t,value\n" + "".join(f"{i},{i / 10}\n" for i in range(2000)))
    calls: list[tuple[int, int]] = []
    assert server.client().datasets.upload(data, progress=lambda sent, total: calls.append((sent, total)))["id"] == "d1"
    assert len(bodies) == 2 and all(data.read_bytes() in body for body in bodies)  # whole, both times
    size = data.stat().st_size
    assert calls == [(size, size), (0, size), (size, size)]  # back to 0 for the second sending; no repeats


def test_the_upload_progress_reports_each_count_once() -> None:
    calls: list[tuple[int, int]] = []
    reader = _CountingReader(io.BytesIO(b"x" * 10), 10, lambda sent, total: calls.append((sent, total)))
    assert b"".join(iter(reader)) == b"x" * 10
    assert calls == [(10, 10)]  # the final empty read does not report (10, 10) again
    calls.clear()
    empty = _CountingReader(io.BytesIO(b""), 0, lambda sent, total: calls.append((sent, total)))
    assert b"".join(iter(empty)) == b"" and calls == [(0, 0)]


def test_sweep_jobs_reads_the_jobs_list_by_sweep_page_by_page(server: FakeServer) -> None:
    ids = [f"j{i:03d}" for i in range(150)]
    server.routes[("GET", "/sweeps/s1")] = httpx.Response(
        200, json={"id": "s1", "jobs": [{"id": i, "status": "succeeded"} for i in ids], "progress": {}}
    )

    def list_jobs(request: httpx.Request) -> httpx.Response:
        assert request.url.params["sweep_id"] == "s1"
        start = int(request.url.params.get("cursor") or 0)
        page = list(reversed(ids))[start : start + 100]  # newest first, 100 a page
        cursor = str(start + 100) if start + 100 < len(ids) else None
        return httpx.Response(
            200, json={"items": [{"id": i, "status": "succeeded"} for i in page], "next_cursor": cursor}
        )

    server.routes[("GET", "/jobs")] = list_jobs
    jobs = server.client().sweeps.get("s1").jobs()
    assert [j.id for j in jobs] == ids  # the sweep's order
    assert len(server.asked("GET", "/jobs")) == 2 and not any(
        r.url.path.startswith("/api/v1/jobs/") for r in server.requests
    )
    assert server.asked("GET", "/jobs")[0].url.params["limit"] == "500"


# --- 2. reconnecting through an outage, within the caller's timeout -----------------------------------


def test_follow_reconnects_with_backoff_and_reports_the_outage(server: FakeServer) -> None:
    running = {"id": "j1", "status": "running"}
    state = {"stream": 0, "refused": 0}

    def events(request: httpx.Request) -> httpx.Response:
        state["stream"] += 1
        if state["stream"] == 1:
            return events_response(
                [sse("0.A", "status", running), sse("1.A", "epoch", {"epoch": 1, "metrics": {}})], True
            )
        if state["refused"] < 3:
            state["refused"] += 1
            return refused(request)
        return events_response(
            [sse("2.A", "epoch", {"epoch": 2, "metrics": {}}), sse("2.A", "end", {"status": "succeeded"})]
        )

    def get_job(request: httpx.Request) -> httpx.Response:
        if 1 <= state["refused"] < 3:
            return refused(request)
        return httpx.Response(200, json={**running, "status": "succeeded" if state["stream"] > 4 else "running"})

    server.routes[("GET", "/jobs/j1/events")] = events
    server.routes[("GET", "/jobs/j1")] = get_job
    notices: list[str] = []
    job = server.client().jobs.get("j1")
    epochs = [e.data["epoch"] for e in job.follow(notify=notices.append) if e.event == "epoch"]
    assert epochs == [1, 2] and job.status == "succeeded"
    assert server.asked("GET", "/jobs/j1/events")[-1].headers["last-event-id"] == "1.A"  # resumed
    assert len(notices) == 2 and notices[0].startswith("lost the connection") and "reset by peer" in notices[0]
    assert notices[1].startswith("reconnected")
    assert server.sleeps == sorted(server.sleeps) and server.sleeps[0] == 0.5 and len(server.sleeps) >= 3


def test_follow_gives_up_after_the_window_or_at_the_deadline(server: FakeServer) -> None:
    server.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "running"})
    job = server.client().jobs.get("j1")
    server.down = True
    with pytest.raises(RnnlabError) as lost:
        list(job.follow(notify=lambda message: None))
    assert lost.value.status_code == 0 and lost.value.code == "connection_error"
    assert "gave up following job j1 after 60 s" in lost.value.message and "Connection refused" in lost.value.message
    assert server.clock[0] == pytest.approx(RECONNECT_SECONDS) and max(server.sleeps) <= 10

    start, server.sleeps[:] = server.clock[0], []
    with pytest.raises(TimeoutError):
        list(job.follow(timeout=7, notify=lambda message: None))
    assert server.clock[0] - start == pytest.approx(7)  # never sleeps past the caller's timeout

    start = server.clock[0]
    with pytest.raises(RnnlabError):
        list(job.follow(reconnect_seconds=5, notify=lambda message: None))
    assert server.clock[0] - start == pytest.approx(5)


def test_429s_while_waiting_never_run_past_the_timeout(server: FakeServer) -> None:
    # A poll inside wait/follow leaves a 429 to the loop's backoff, which stops at the deadline; the
    # request's own retries (up to max_retry_wait, 120 s) ran 30 s past a 1 s timeout before.
    server.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "running"})
    job = server.client().jobs.get("j1")
    server.routes[("GET", "/jobs/j1")] = rate_limited("30")
    server.routes[("GET", "/jobs/j1/events")] = rate_limited("30")
    for wait in (
        lambda: job.wait(timeout=1, notify=lambda m: None),
        lambda: list(job.follow(timeout=1, notify=lambda m: None)),
    ):
        start = server.clock[0]
        with pytest.raises(TimeoutError):
            wait()
        assert server.clock[0] - start == pytest.approx(1)


def test_follow_waits_a_too_many_streams_answer_out(server: FakeServer) -> None:
    streams = answers(
        error(429, "too_many_streams", "this key already has 5 open event streams", **{"Retry-After": "7"}),
        events_response([sse("3.A", "end", {"status": "succeeded"})]),
    )
    server.routes[("GET", "/jobs/j1/events")] = streams
    server.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "running"})
    events = list(server.client().jobs.get("j1").follow(notify=lambda message: None))
    assert [e.event for e in events] == ["end"] and server.sleeps == [7.0]


def test_wait_and_sweep_wait_poll_through_an_outage(server: FakeServer) -> None:
    server.routes[("GET", "/jobs/j1")] = answers(
        httpx.Response(200, json={"id": "j1", "status": "running"}),
        httpx.Response(503, json={"error": {"code": "database_unavailable", "message": "down"}}),
        httpx.Response(200, json={"id": "j1", "status": "running"}),
        httpx.Response(200, json={"id": "j1", "status": "succeeded"}),
    )
    job = server.client().jobs.get("j1")
    state = {"n": 0}
    original = server.handle

    def flaky(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        return refused(request) if state["n"] == 2 else original(request)

    server.handle = flaky  # type: ignore[method-assign]
    notices: list[str] = []
    assert job.wait(poll_seconds=1, notify=notices.append).status == "succeeded"
    assert [n.split(" ")[0] for n in notices] == ["lost", "reconnected"]

    server.handle = original  # type: ignore[method-assign]
    server.routes[("GET", "/sweeps/s1")] = httpx.Response(
        200, json={"id": "s1", "search": "grid", "progress": {"total": 1, "finished": 0}}
    )
    sweep = server.client().sweeps.get("s1")
    server.down = True
    start = server.clock[0]
    with pytest.raises(TimeoutError):
        sweep.wait(timeout=20, notify=lambda message: None)
    assert server.clock[0] - start == pytest.approx(20)
    with pytest.raises(RnnlabError) as lost:
        sweep.wait(notify=lambda message: None)
    assert lost.value.code == "connection_error" and "gave up waiting for sweep s1" in lost.value.message


def test_a_client_error_while_following_is_not_retried(server: FakeServer) -> None:
    server.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "running"})
    job = server.client().jobs.get("j1")
    server.routes[("GET", "/jobs/j1/events")] = error(404, "job_not_found", "no job j1")
    with pytest.raises(RnnlabError) as gone:
        list(job.follow())
    assert gone.value.status_code == 404 and server.sleeps == []


# --- 4. API keys ------------------------------------------------------------------------------------


def test_api_keys_are_stripped_and_odd_ones_refused_without_echo(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes[("GET", "/datasets/d1")] = httpx.Response(200, json={"id": "d1"})
    server.client(" rnl_secret42\n").datasets.get("d1")
    assert server.requests[-1].headers["authorization"] == "Bearer rnl_secret42"
    monkeypatch.setenv("RNNLAB_API_KEY", "rnl_secret42\r\n")
    server.client(None).datasets.get("d1")
    assert server.requests[-1].headers["authorization"] == "Bearer rnl_secret42"
    monkeypatch.setenv("RNNLAB_API_KEY", "  ")
    server.client(None).datasets.get("d1")
    assert "authorization" not in server.requests[-1].headers
    for bad in ("rnl_sec ret42", "rnl_sec\nret42", "rnl_sec\x00ret42", "rnl_sec\tret42"):
        with pytest.raises(ValueError, match="space or a control character") as refused_key:
            Client(URL, bad)
        assert "ret42" not in str(refused_key.value)


def test_a_header_httpx_refuses_is_not_a_connection_error_and_not_echoed() -> None:
    def transport(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value b'Bearer rnl_secret42\\n'")

    client = Client(URL, "k", http=httpx.Client(base_url=URL, transport=httpx.MockTransport(transport)))
    for call in (lambda: client.jobs.get("j1"), lambda: client.jobs.get("j1").download_model(io.BytesIO())):
        with pytest.raises(ValueError, match="a header holds a character HTTP does not allow") as raised:
            call()
        assert "secret" not in str(raised.value)
    job_client = FakeServer()
    job_client.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "running"})
    job = job_client.client().jobs.get("j1")
    job._client = client
    with pytest.raises(ValueError, match="not shown"):
        list(job.follow())


# --- 9. the model format from the file's suffix -------------------------------------------------------


def test_download_model_reads_the_format_off_the_suffix(server: FakeServer, tmp_path: Path) -> None:
    server.routes[("GET", "/jobs/j1")] = httpx.Response(200, json={"id": "j1", "status": "succeeded"})
    server.routes[("GET", "/jobs/j1/model")] = lambda r: httpx.Response(200, content=r.url.params["format"].encode())
    job = server.client().jobs.get("j1")
    for name, asked, saved in (
        ("m.onnx", None, "onnx"),
        ("M.SafeTensors", None, "safetensors"),
        ("m.pt", "pt", "pt"),
        ("m.onnx", "onnx", "onnx"),
        ("model", None, "pt"),
        ("model", "onnx", "onnx"),
    ):
        job.download_model(tmp_path / name, format=asked)  # type: ignore[arg-type]
        assert (tmp_path / name).read_bytes() == saved.encode(), name
    buffer = io.BytesIO()
    job.download_model(buffer, format="safetensors")
    assert buffer.getvalue() == b"safetensors"
    job.download_model(str(tmp_path / "s.onnx"))
    assert (tmp_path / "s.onnx").read_bytes() == b"onnx"
    asked_before = len(server.requests)
    with pytest.raises(ValueError, match="says onnx but the format asked for is pt"):
        job.download_model(tmp_path / "x.onnx", format="pt")
    with pytest.raises(ValueError, match=r"ends in \.pt, \.onnx or \.safetensors"):
        job.download_model(tmp_path / "x.txt")
    assert len(server.requests) == asked_before and not (tmp_path / "x.onnx").exists()
