"""``Job.follow`` over a stream that drops: it reconnects with ``Last-Event-ID`` and yields every epoch
once, also when the job was retried between (scripted server: httpx's MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from rnnlab import Client


def _sse(event_id: str, event: str, data: dict) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


class _Dropping(httpx.SyncByteStream):
    """Sends ``chunks``, then breaks the connection (or ends it, with ``drop=False``)."""

    def __init__(self, chunks: list[bytes], drop: bool) -> None:
        self.chunks, self.drop = chunks, drop

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.drop:
            raise httpx.ReadError("connection reset by peer")


def _epoch(n: int, run: str) -> bytes:
    return _sse(f"{n}.{run}", "epoch", {"epoch": n, "metrics": {"train": {"loss": 1.0 / n}}})


def test_follow_resumes_a_dropped_stream_after_the_last_event(monkeypatch) -> None:
    monkeypatch.setattr("rnnlab.client.time.sleep", lambda s: None)
    running = {"id": "j1", "status": "running", "attempts": 1, "started_at": "t1"}
    asked: list[str | None] = []
    streams = [
        # the first connection: epochs 1 and 2 of run A, then the network drops
        ([_sse("0.A", "status", running), _epoch(1, "A"), _epoch(2, "A")], True),
        # resumed after 2.A: the server sends epoch 3, then the job is retried (run B starts at 1)
        (
            [
                _epoch(3, "A"),
                _sse("3.A", "status", running),
                _epoch(1, "B"),
                _epoch(2, "B"),
                _sse("2.B", "status", {**running, "attempts": 2, "started_at": "t2", "status": "succeeded"}),
                _sse("2.B", "end", {"status": "succeeded"}),
            ],
            False,
        ),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            asked.append(request.headers.get("last-event-id"))
            chunks, drop = streams[len(asked) - 1]
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Dropping(chunks, drop))
        return httpx.Response(200, json={**running, "status": "succeeded" if len(asked) == 2 else "running"})

    client = Client(
        "http://rnnlab.test",
        "k",
        http=httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler)),
    )
    job = client.jobs.get("j1")
    seen = [(e.event, e.data.get("epoch"), e.id) for e in job.follow()]

    assert asked == [None, "2.A"]  # reconnected after the last event it had
    assert [(n, i) for e, n, i in seen if e == "epoch"] == [(1, "1.A"), (2, "2.A"), (3, "3.A"), (1, "1.B"), (2, "2.B")]
    assert seen[-1] == ("end", None, "2.B") and job.done


def test_follow_skips_epochs_a_server_without_resume_sends_again(monkeypatch) -> None:
    """An older server ignores Last-Event-ID and sends every epoch again; none is yielded twice."""
    monkeypatch.setattr("rnnlab.client.time.sleep", lambda s: None)
    status = {"id": "j1", "status": "running", "attempts": 1, "started_at": "t1"}
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            calls["n"] += 1
            old = b"event: epoch\ndata: %s\n\n"
            epochs = [old % json.dumps({"epoch": n, "metrics": {}}).encode() for n in (1, 2, 3)[: calls["n"] + 1]]
            end = [b'event: end\ndata: {"status": "succeeded"}\n\n'] if calls["n"] == 2 else []
            return httpx.Response(200, stream=_Dropping(epochs + end, drop=calls["n"] == 1))
        return httpx.Response(200, json={**status, "status": "succeeded" if calls["n"] == 2 else "running"})

    client = Client(
        "http://rnnlab.test",
        "k",
        http=httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler)),
    )
    events = list(client.jobs.get("j1").follow())
    assert [e.data["epoch"] for e in events if e.event == "epoch"] == [1, 2, 3]


class _Silent(httpx.SyncByteStream):
    """Sends ``chunks``, then stays silent until the read timeout (the clock moves on by ``wait``)."""

    def __init__(self, chunks: list[bytes], clock: list[float], wait: float) -> None:
        self.chunks, self.clock, self.wait = chunks, clock, wait

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        self.clock[0] += self.wait
        raise httpx.ReadTimeout("timed out")


def _running_client(monkeypatch, read_timeouts: list[float | None]) -> Client:
    clock = [0.0]
    monkeypatch.setattr("rnnlab.client.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("rnnlab.client.time.sleep", lambda s: None)
    running = {"id": "j1", "status": "running", "attempts": 1, "started_at": "t1"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            read_timeouts.append(request.extensions["timeout"]["read"])
            stream = _Silent([_sse("0.A", "status", running), _epoch(1, "A")], clock, wait=4.0)
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
        return httpx.Response(200, json=running)

    http = httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler))
    return Client("http://rnnlab.test", "k", http=http)


def test_follow_with_a_timeout_gives_up_on_a_job_that_stays_running(monkeypatch) -> None:
    read_timeouts: list[float | None] = []
    job = _running_client(monkeypatch, read_timeouts).jobs.get("j1")
    seen = []
    try:
        for event in job.follow(timeout=10):
            seen.append((event.event, event.data.get("epoch")))
    except TimeoutError as exc:
        assert "j1" in str(exc) and "running" in str(exc)
    else:
        raise AssertionError("follow(timeout=10) returned while the job was running")
    # each reconnection waits only for what is left of the deadline: 10 s, then 6 s, then 2 s
    assert read_timeouts == [10.0, 6.0, 2.0]
    assert [n for e, n in seen if e == "epoch"] == [1]  # once, though every stream sent it


def test_wait_with_progress_keeps_its_timeout(monkeypatch) -> None:
    read_timeouts: list[float | None] = []
    job = _running_client(monkeypatch, read_timeouts).jobs.get("j1")
    try:
        job.wait(progress=True, timeout=3)
    except TimeoutError:
        pass
    else:
        raise AssertionError("wait(progress=True, timeout=3) returned while the job was running")
    assert read_timeouts == [3.0]


class _KeepingAlive(httpx.SyncByteStream):
    """A queued job's stream: one status event, then only keep-alive comments; each moves the clock."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def __iter__(self) -> Iterator[bytes]:
        yield _sse("0.A", "status", {"id": "j1", "status": "queued"})
        for _ in range(1000):
            self.clock[0] += 15.0  # the server's keep-alive interval
            yield b": keep-alive\n\n"


def test_follow_with_a_timeout_is_not_held_by_keep_alives(monkeypatch) -> None:
    """The server sends a comment every 15 s while a job waits: each is a successful read, so no read
    timeout fires; the deadline must still end the follow."""
    clock = [0.0]
    monkeypatch.setattr("rnnlab.client.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("rnnlab.client.time.sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_KeepingAlive(clock))
        return httpx.Response(200, json={"id": "j1", "status": "queued"})

    http = httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler))
    job = Client("http://rnnlab.test", "k", http=http).jobs.get("j1")
    seen = []
    try:
        for event in job.follow(timeout=60):
            seen.append(event.event)
    except TimeoutError:
        pass
    else:
        raise AssertionError("follow(timeout=60) returned while the job was queued")
    assert clock[0] <= 75  # given up at the first keep-alive past the deadline, not after 1000 of them
    assert "keep-alive" not in seen  # comments are the loop's business, not the caller's
