"""Hostile input and limits at the API: NUL characters, non-finite numbers, body limits and timeouts,
rate limits, quotas, event-stream caps, Allow headers, the OpenAPI document and /metrics access."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from app.config import get_settings
from tests.datasets.conftest import set_setting
from tests.stack import forecast_spec, sine_csv


def upload_sine(client: Any, auth: dict[str, str]) -> str:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("sine.csv", sine_csv(200).encode())})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return dict(error)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/jobs/%00", "job_id"),
        ("/api/v1/datasets/%00", "dataset_id"),
        ("/api/v1/sweeps/%00", "sweep_id"),
        ("/api/v1/datasets/%00/leaderboard", "dataset_id"),
        ("/api/v1/datasets/a%00b/preview", "dataset_id"),
        ("/api/v1/jobs?dataset_id=%00", "dataset_id"),
        ("/api/v1/jobs?sweep_id=a%00b", "sweep_id"),
        ("/api/v1/jobs?where=test.rmse%20%3C%20%00", "where"),
        ("/api/v1/metrics?job_id=%00", "job_id"),
        ("/api/v1/jobs?cursor=%00", "cursor"),
    ],
)
def test_a_nul_in_a_path_or_query_value_is_a_400_naming_it(client, auth, path: str, field: str) -> None:
    error = error_of(client.get(path, headers=auth), 400, "invalid_characters")
    assert error["details"]["field"] == field and field in error["message"]


def test_json_bodies_with_nul_or_non_finite_values_are_refused_naming_the_field(client, auth) -> None:
    sine = upload_sine(client, auth)
    spec = forecast_spec(sine)
    named = {**spec, "name": "a\u0000b"}
    error = error_of(client.post("/api/v1/jobs", headers=auth, json=named), 400, "invalid_characters")
    assert error["details"][0]["field"] == "name"
    for raw in (
        '{"training": {"gradient_clip": 1e999}}',
        '{"training": {"gradient_clip": Infinity}}',
        '{"training": {"gradient_clip": NaN}}',
    ):
        body = json.dumps(spec)[:-1] + ", " + raw[1:]
        r = client.post("/api/v1/jobs", headers={**auth, "content-type": "application/json"}, content=body)
        error = error_of(r, 422, "non_finite_number")
        assert error["details"][0]["field"] == "training.gradient_clip"  # NaN and Infinity literals too
        assert "training.gradient_clip" in error["message"]
    grid = {"name": "s", "base": spec, "grid": {"model.hidden_size": [4, "x\u0000"]}, "seeds": [0]}
    error = error_of(client.post("/api/v1/sweeps", headers=auth, json=grid), 400, "invalid_characters")
    assert error["details"][0]["field"] == "grid.model.hidden_size[1]"
    nan = '{"inputs": [[[NaN]]]}'
    r = client.post("/api/v1/jobs/x/predict", headers={**auth, "content-type": "application/json"}, content=nan)
    assert error_of(r, 422, "non_finite_number")["details"][0]["field"] == "inputs[0][0][0]"
    assert client.get("/api/v1/jobs", headers=auth).json()["items"] == []


def test_a_json_body_that_is_not_utf8_is_named_as_such(client, auth) -> None:
    body = '{"name": "café"}'.encode("latin-1")
    r = client.post("/api/v1/jobs", headers={**auth, "content-type": "application/json"}, content=body)
    error = error_of(r, 400, "invalid_json")
    assert "not UTF-8" in error["message"] and "0xe9" in error["message"]


def test_a_boolean_where_a_spec_takes_a_number_is_a_422_naming_the_field(client, auth) -> None:
    sine = upload_sine(client, auth)
    spec = forecast_spec(sine)
    for section, name, value in (
        ("model", "ensemble", True),
        ("model", "hidden_size", False),
        ("training", "epochs", True),
    ):
        body = {**spec, section: {**spec.get(section, {}), name: value}}
        error = error_of(client.post("/api/v1/jobs", headers=auth, json=body), 422, "invalid_spec")
        assert error["details"][0]["field"] == f"{section}.{name}"
        assert f"not the boolean {str(value).lower()}" in error["details"][0]["message"]
    grid = {"name": "s", "base": spec, "grid": {"model.ensemble": [True, 2]}, "seeds": [0]}
    error = error_of(client.post("/api/v1/sweeps", headers=auth, json=grid), 422, "invalid_spec")
    assert error["details"][0]["field"] == "grid.model.ensemble[0]"
    # A field that takes booleans still does.
    on = {**spec, "model": {**spec.get("model", {}), "bidirectional": True}}
    assert client.post("/api/v1/jobs", headers=auth, json=on).status_code == 201
    # A number past the float range in a where filter, as in a JSON body, is refused.
    error = error_of(
        client.get("/api/v1/jobs", headers=auth, params={"where": "test.rmse > 1e999"}), 400, "invalid_where"
    )
    assert "1e999 is beyond the float range" in error["message"]


def test_a_json_body_over_the_limit_is_413_before_parsing(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, max_json_body_bytes="4096")
    body = json.dumps({"inputs": [[[0.5] * 2000]]})
    r = client.post("/api/v1/jobs/x/predict", headers={**auth, "content-type": "application/json"}, content=body)
    error = error_of(r, 413, "too_large")
    assert error["details"]["limit_bytes"] == 4096

    def chunks():  # no Content-Length: the limit is checked while reading
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/api/v1/jobs/x/predict", headers={**auth, "content-type": "application/json"}, content=chunks())
    error_of(r, 413, "too_large")


def test_a_body_that_stops_arriving_is_a_408() -> None:
    from app.inputs import RequestBodyGuard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    async def stalled_receive() -> dict[str, Any]:
        await asyncio.sleep(60)
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/jobs",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
    }
    get_settings.cache_clear()
    settings = get_settings()
    settings.body_read_timeout_seconds = 0.2
    try:
        asyncio.run(asyncio.wait_for(RequestBodyGuard(app)(scope, stalled_receive, send), 5))
    finally:
        get_settings.cache_clear()
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


def test_options_and_405_list_every_method_of_the_path(client, auth) -> None:
    r = client.options("/api/v1/jobs", headers=auth)
    assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    r = client.put("/api/v1/jobs", headers=auth)
    error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    r = client.patch("/api/v1/jobs/abc", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"


def test_head_answers_as_get_without_the_body(client, auth) -> None:
    for path, headers in (("/healthz", {}), ("/", {}), ("/api/v1/jobs", auth), ("/api/v1/jobs", {})):
        got, head = client.get(path, headers=headers), client.head(path, headers=headers)
        assert head.status_code == got.status_code and head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers["content-type"] == got.headers["content-type"]
    # An event stream that would run while the job is queued ends once the headers are out.
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(upload_sine(client, auth))).json()["id"]
    head = client.head(f"/api/v1/jobs/{job}/events", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")
    assert client.head("/api/v1/nope", headers=auth).status_code == 404
    assert client.head("/api/v1/jobs/abc/cancel", headers=auth).status_code == 405  # POST only


def test_openapi_documents_every_error_status_and_the_event_stream(client) -> None:
    doc = client.get("/openapi.json").json()
    missing = []
    for path, operations in doc["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, operation in operations.items():
            documented = set(operation["responses"])
            missing += [
                f"{method} {path} {s}" for s in ("400", "401", "404", "409", "413", "422", "429") if s not in documented
            ]
    assert missing == []
    events = doc["paths"]["/api/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


def test_the_rate_limit_answers_429_with_retry_after(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, rate_limit="3/minute")
    statuses = [client.get("/api/v1/jobs", headers=auth).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = client.get("/api/v1/jobs", headers=auth)
    error_of(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    other = {"Authorization": "Bearer rnl_someone_else"}
    assert client.get("/api/v1/jobs", headers=other).status_code == 401  # counted per key


def test_the_active_jobs_quota_is_a_409_naming_it(client, auth, other_auth, monkeypatch) -> None:
    sine = upload_sine(client, auth)
    set_setting(monkeypatch, quota_active_jobs="2")
    assert client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).status_code == 201
    sweep = {"name": "s", "base": forecast_spec(sine), "grid": {"model.hidden_size": [4, 8]}, "seeds": [0]}
    error = error_of(client.post("/api/v1/sweeps", headers=auth, json=sweep), 409, "quota_active_jobs")
    assert error["details"]["quota"] == "active_jobs" and error["details"]["limit"] == 2
    assert client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).status_code == 201
    error_of(client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)), 409, "quota_active_jobs")
    other_sine = upload_sine(client, other_auth)  # another project has its own quota
    assert client.post("/api/v1/jobs", headers=other_auth, json=forecast_spec(other_sine)).status_code == 201


def test_racing_submits_cannot_pass_the_active_jobs_quota(client, auth, monkeypatch) -> None:
    """Eight threads submit at once against a quota of 3: exactly 3 jobs are created (the project
    row is locked between the count and the insert, on SQLite and PostgreSQL)."""
    from sqlalchemy import func, select

    from app.db import new_session
    from app.errors import AppError
    from app.jobs.service import create_job
    from app.models import Dataset, Job, Project

    sine = upload_sine(client, auth)
    set_setting(monkeypatch, quota_active_jobs="3")
    with new_session() as session:
        project_id = session.get(Dataset, sine).project_id  # type: ignore[union-attr]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def submit() -> None:
        with new_session() as session:
            project = session.get(Project, project_id)
            barrier.wait()
            try:
                create_job(session, project, forecast_spec(sine))  # type: ignore[arg-type]
                outcomes.append("created")
            except AppError as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["created"] * 3 + ["quota_active_jobs"] * 5
    with new_session() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.project_id == project_id)) == 3


def test_the_storage_quota_is_a_413_naming_it(client, auth, monkeypatch) -> None:
    first = sine_csv(200).encode()
    set_setting(monkeypatch, quota_stored_bytes=str(len(first) + 100))
    assert client.post("/api/v1/datasets", headers=auth, files={"file": ("a.csv", first)}).status_code == 201
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("b.csv", sine_csv(300).encode())})
    error = error_of(r, 413, "quota_stored_bytes")
    assert error["details"]["quota"] == "stored_bytes"
    assert len(client.get("/api/v1/datasets", headers=auth).json()["items"]) == 1


def test_event_streams_per_key_are_capped(client, auth, monkeypatch) -> None:
    from app.ratelimit import acquire_event_stream, client_key, open_event_streams, release_event_stream

    sine = upload_sine(client, auth)
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()
    set_setting(monkeypatch, max_event_streams_per_key="2")

    class FakeRequest:
        headers = {"authorization": auth["Authorization"]}
        client = None

    who = client_key(FakeRequest())  # type: ignore[arg-type]
    acquire_event_stream(who)
    acquire_event_stream(who)
    try:
        r = client.get(f"/api/v1/jobs/{job['id']}/events", headers=auth)
        error_of(r, 429, "too_many_streams")
        assert r.headers["retry-after"]
    finally:
        release_event_stream(who)
        release_event_stream(who)
    assert open_event_streams(who) == 0
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth)
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events", headers=auth) as stream:
        assert "event: end" in "".join(stream.iter_text())
    assert open_event_streams(who) == 0  # a finished stream gives its slot back


def test_prometheus_metrics_follow_their_access_setting(client, auth, monkeypatch) -> None:
    assert client.get("/metrics").status_code == 404  # off by default: counts of every project
    set_setting(monkeypatch, metrics_access="token", metrics_token="s3cret")
    error_of(client.get("/metrics"), 401, "unauthorized")
    error_of(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert "rnnlab_jobs" in client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    set_setting(monkeypatch, metrics_access="open")
    assert "rnnlab_ready" in client.get("/metrics").text


def test_dataset_lists_carry_column_counts_not_columns(client, auth) -> None:
    upload_sine(client, auth)
    item = client.get("/api/v1/datasets", headers=auth).json()["items"][0]
    assert "columns" not in item and item["num_columns"] == 2


def test_a_wide_preview_shows_fewer_rows(client, auth, monkeypatch) -> None:
    header = ",".join(f"c{i}" for i in range(100))
    rows = "\n".join(",".join(str(r) for _ in range(100)) for r in range(50))
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("wide.csv", f"{header}\n{rows}\n".encode())})
    set_setting(monkeypatch, max_preview_cells="1000")
    preview = client.get(f"/api/v1/datasets/{r.json()['id']}/preview?rows=50", headers=auth).json()
    assert len(preview["rows"]) == 10


def test_late_surprises_in_many_columns_cost_a_fixed_number_of_passes(tmp_path, monkeypatch) -> None:
    import app.datasets.inspection as inspection

    columns = 40
    lines = [",".join(f"c{i}" for i in range(columns))]
    lines += [",".join(str(r) for _ in range(columns)) for r in range(30_000)]  # past the first 1 MiB block
    lines.append(",".join("word" if i % 2 else "1.5" for i in range(columns)))  # every column changes type
    src = tmp_path / "late.csv"
    src.write_text("\n".join(lines) + "\n")
    passes = {"n": 0}
    real = inspection._write_parquet

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(inspection, "_write_parquet", counted)
    num_rows, summaries = inspection.convert_csv_to_parquet(src, tmp_path / "out.parquet", "late.csv")
    assert num_rows == 30_001 and passes["n"] == 2  # one failed read, one with the inferred types
    assert [s["dtype"] for s in summaries] == ["float64" if i % 2 == 0 else "string" for i in range(columns)]


@pytest.mark.redis
def test_the_rate_limit_is_shared_through_redis(client, auth, redis_db_url, monkeypatch) -> None:
    import redis

    url = redis_db_url
    set_setting(monkeypatch, rate_limit="2/minute", broker_url=url)
    assert [client.get("/api/v1/jobs", headers=auth).status_code for _ in range(3)] == [200, 200, 429]
    keys = redis.Redis.from_url(url).keys("LIMITS:*")
    assert keys  # the count lives in Redis, where every API process sees it
    redis.Redis.from_url(url).delete(*keys)


def test_an_old_npz_with_an_empty_dtype_is_a_4xx_on_preview_and_submit(client, auth) -> None:
    """Datasets stored before uploads refused ``|S0`` arrays: preview and job submit answer 422."""
    import io
    import zipfile

    import numpy as np
    from numpy.lib import format as npy_format

    from app.datasets.loading import dataset_path
    from app.db import new_session
    from app.models import Dataset

    buf = io.BytesIO()
    np.savez(buf, X=np.zeros((20, 5, 1)), y=np.arange(20) % 2)
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("old.npz", buf.getvalue())})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    header = io.BytesIO()  # what an old upload could hold: an array of dtype |S0
    npy_format.write_array_header_1_0(header, {"descr": "|S0", "fortran_order": False, "shape": (20, 5, 1)})
    y = io.BytesIO()
    np.save(y, np.arange(20) % 2)
    with new_session() as session:
        path = dataset_path(session.get(Dataset, dataset_id))  # type: ignore[arg-type]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", header.getvalue())
        archive.writestr("y.npy", y.getvalue())

    error = error_of(client.get(f"/api/v1/datasets/{dataset_id}/preview", headers=auth), 422, "invalid_npz")
    assert error["details"]["array"] == "X"
    spec = {"dataset_id": dataset_id, "task": "classification", "data": {"layout": "arrays", "target": "y"}}
    error = error_of(client.post("/api/v1/jobs", headers=auth, json=spec), 422, "invalid_npz")
    assert error["details"]["array"] == "X"


def test_the_stream_cap_is_counted_in_redis_across_api_processes(monkeypatch, redis_url, env) -> None:
    """With a Redis broker, a key's open streams are counted in Redis: slots taken by another API
    process count too, a released one frees a place, and one a killed process left behind lapses."""
    import uuid

    from app import ratelimit

    set_setting(monkeypatch, broker_url=redis_url, max_event_streams_per_key="2")
    monkeypatch.setattr(ratelimit, "STREAM_TTL_SECONDS", 0.5)
    who = f"key:test-{uuid.uuid4().hex}"
    dead = ratelimit.acquire_event_stream(who)  # its API process is killed: never refreshed
    ratelimit._streams.clear()  # nothing of the count lives in this process
    alive = ratelimit.acquire_event_stream(who)
    with pytest.raises(ratelimit.TooManyRequests):
        ratelimit.acquire_event_stream(who)
    assert ratelimit.open_event_streams(who) == 2
    time.sleep(0.3)
    ratelimit.refresh_event_stream(who, alive)
    time.sleep(0.3)
    assert ratelimit.open_event_streams(who) == 1  # the dead one lapsed, the refreshed one holds
    third = ratelimit.acquire_event_stream(who)
    ratelimit.release_event_stream(who, third)
    ratelimit.release_event_stream(who, alive)
    assert ratelimit.open_event_streams(who) == 0
    assert dead


def test_an_unreachable_redis_does_not_turn_requests_into_500s(client, auth, monkeypatch) -> None:
    """The rate limit and the stream cap count in Redis when the broker is Redis; while it is away,
    requests go on uncounted: a submit still answers 201, bad input 4xx, and event streams open."""
    import socket

    from app import ratelimit

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(120).encode(), "text/csv")})
    dataset_id = r.json()["id"]
    set_setting(monkeypatch, broker_url=f"redis://127.0.0.1:{port}/0", rate_limit="100/second")
    monkeypatch.setitem(ratelimit._store_down_until, "at", 0.0)

    assert client.get("/api/v1/jobs").status_code == 401  # no key: 401, not 500
    assert ratelimit._store_down_until["at"] > time.monotonic()  # the failure was noted: not asked again
    assert client.get("/api/v1/jobs", headers=auth).status_code == 200
    assert client.post("/api/v1/jobs", headers=auth, json={"x": 1}).status_code == 422
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(dataset_id, epochs=1))
    assert job.status_code == 201, job.text  # waits in SQL until the broker is back
    client.post(f"/api/v1/jobs/{job.json()['id']}/cancel", headers=auth)
    with client.stream("GET", f"/api/v1/jobs/{job.json()['id']}/events", headers=auth) as stream:
        assert stream.status_code == 200
        assert any(line.startswith("event: end") for line in stream.iter_lines())
