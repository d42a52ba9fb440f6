"""What the CLI prints, against a scripted server (in-process, stdout and stderr not terminals): user
and server text verbatim (never rich markup), no hard wrapping, -o everywhere, follow's exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from rnnlab.cli import EXIT_UNAVAILABLE, EXIT_USAGE
from tests.client.fake import FakeServer, Result, error, events_response, run_cli, sse

JOB_ID = "0123456789abcdef0123456789abcdef"  # 32 characters, as the API's ids
DS_ID = "fedcba9876543210fedcba9876543210"


def job(status: str = "succeeded", name: str = "exp [/b]", **extra: Any) -> dict[str, Any]:
    body = {
        "id": JOB_ID,
        "name": name,
        "status": status,
        "spec": {"task": "forecast", "model": {"cell": "gru"}},
        "dataset_id": DS_ID,
        "sweep_id": None,
        "progress": {"epoch": 2, "epochs": 2},
        "created_at": "2026-01-01T00:00:00Z",
        "summary": {"test": {"rmse": 0.5, "mae": 0.25}, "val": {"rmse": 0.75}} if status == "succeeded" else None,
        "error": None,
    }
    return {**body, **extra}


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], server: FakeServer) -> Any:
    monkeypatch.setenv("COLUMNS", "40")  # narrow: nothing printed to a pipe may wrap at it
    server.patch_time(monkeypatch)

    def invoke(*args: str) -> Result:
        return run_cli(monkeypatch, capsys, server, *args)

    return invoke


# --- 1. user and server text is never rich markup ----------------------------------------------------


def test_names_with_brackets_survive_tables_and_errors_verbatim(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    dataset = {"id": DS_ID, "name": "prices [/eur]", "format": "csv", "size_bytes": 10, "num_rows": 2}
    server.routes[("GET", "/datasets")] = httpx.Response(200, json={"items": [dataset], "next_cursor": None})
    server.routes[("GET", f"/datasets/{DS_ID}")] = httpx.Response(
        200, json={**dataset, "sha256": "x", "columns": [{"name": "price[usd]", "dtype": "float", "missing": 0}]}
    )
    preview = {
        "columns": [{"name": "price[usd]"}, {"name": "[bold]x"}],
        "rows": [{"price[usd]": 1.5, "[bold]x": "[/y]"}],
    }
    server.routes[("GET", f"/datasets/{DS_ID}/preview")] = httpx.Response(200, json=preview)
    server.routes[("GET", "/jobs")] = httpx.Response(200, json={"items": [job()], "next_cursor": None})
    failed = job("failed", error={"type": "DataError", "message": "column [/x] and price[usd] are missing"})
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=failed)

    listed = cli("datasets", "list")
    assert listed.code == 0, listed.err
    assert "prices [/eur]" in listed.out and DS_ID in listed.out
    shown = cli("datasets", "show", DS_ID)
    assert shown.code == 0 and "prices [/eur]" in shown.out and "price[usd]" in shown.out
    previewed = cli("datasets", "preview", DS_ID)
    assert previewed.code == 0 and "price[usd]" in previewed.out and "[bold]x" in previewed.out
    assert "[/y]" in previewed.out
    jobs = cli("jobs", "list")
    assert jobs.code == 0 and "exp [/b]" in jobs.out
    job_shown = cli("jobs", "show", JOB_ID)
    assert job_shown.code == 0 and "DataError: column [/x] and price[usd] are missing" in job_shown.err

    # an error answer whose message and details hold brackets
    details = [{"field": "data.target", "message": "column '[/x]' is not in the dataset (price[usd], t)"}]
    message = "data.target: column '[/x]' is not in the dataset (price[usd], t)"
    server.routes[("POST", "/jobs")] = error(422, "invalid_spec", message, details)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset_id: {DS_ID}\ntask: forecast\ndata: {{layout: series, target: '[/x]'}}\n")
    refused = cli("jobs", "submit", str(spec))
    assert refused.code == 1 and "Traceback" not in refused.err
    assert refused.err.splitlines() == [f"error invalid_spec: {message}"]  # the detail adds nothing: once

    # a file's own name in a local error
    bad = tmp_path / "[bold]bad.yaml"
    bad.write_text("- a list\n")
    local = cli("jobs", "submit", str(bad))
    assert local.code == 1 and f"{bad} must hold a mapping" in local.err


def test_help_shows_the_bracketed_defaults(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the help's boxes fold at the width
    shown = cli("jobs", "--help")
    text = " ".join(shown.out.split())
    assert "Server URL [env RNNLAB_URL; default http://127.0.0.1:8000]." in text
    assert "API key [env RNNLAB_API_KEY]." in text


# --- 6. no hard wrapping off a terminal -------------------------------------------------------------


def test_messages_and_tables_are_not_wrapped_in_a_pipe(cli: Any, server: FakeServer) -> None:
    server.down = True
    down = cli("jobs", "list")
    assert down.code == 1
    assert (
        down.err
        == "error connection_error: cannot reach rnnlab at http://rnnlab.test: [Errno 111] Connection refused\n"
    )
    server.down = False
    items = [job(name="a rather long job name that does not fit in forty columns") for _ in range(2)]
    server.routes[("GET", "/jobs")] = httpx.Response(200, json={"items": items, "next_cursor": None})
    listed = cli("jobs", "list")
    lines = listed.out.splitlines()
    assert sum(JOB_ID in line for line in lines) == 2  # each id whole, on one line
    assert any("a rather long job name that does not fit in forty columns" in line for line in lines)


# --- 5. a tpe report is titled with its split -------------------------------------------------------


def report(split: str) -> dict[str, Any]:
    setting = {"rank": 1, "setting": {"model.hidden_size": 8}, "n": 2, "metrics": {"rmse": {"mean": 0.5}}}
    return {
        "split": split,
        "main_metric": "rmse",
        "lower_is_better": True,
        "succeeded": 2,
        "total": 2,
        "complete": True,
        "settings": [setting],
        "best": {"explanation": "only one setting [/x]"},
    }


def sweep(split: str = "test") -> dict[str, Any]:
    return {
        "id": "s1",
        "name": "tpe",
        "dataset_id": DS_ID,
        "search": "tpe" if split == "val" else "grid",
        "progress": {"total": 2, "finished": 2, "succeeded": 2},
        "jobs": [],
        "report": report(split),
    }


@pytest.mark.parametrize("split", ["val", "test"])
def test_sweep_report_title_names_the_reports_split(cli: Any, server: FakeServer, split: str) -> None:
    server.routes[("GET", "/sweeps/s1")] = httpx.Response(200, json=sweep(split))
    shown = cli("sweeps", "report", "s1")
    assert shown.code == 0, shown.err
    assert f"{split} rmse over seeds" in shown.out and "only one setting [/x]" in shown.err
    other = "test" if split == "val" else "val"
    assert f"{other} rmse over seeds" not in shown.out


# --- 7. jobs show -o csv carries the job's own fields ------------------------------------------------


def test_jobs_show_csv_has_the_jobs_fields(cli: Any, server: FakeServer) -> None:
    failed = job("failed", name="f", error={"type": "DataError", "message": "no rows, left"})
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=failed)
    rows = list(csv.DictReader(io.StringIO(cli("jobs", "show", JOB_ID, "-o", "csv").out)))
    assert rows == [
        {
            "id": JOB_ID,
            "name": "f",
            "status": "failed",
            "cell": "gru",
            "epoch": "2/2",
            "created_at": "2026-01-01T00:00:00Z",
            "sweep_id": "",
            "error": "DataError: no rows, left",
            "split": "",
        }
    ]
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=job())
    rows = list(csv.DictReader(io.StringIO(cli("jobs", "show", JOB_ID, "-o", "csv").out)))
    assert [(r["id"], r["status"], r["split"], r["rmse"], r["mae"]) for r in rows] == [
        (JOB_ID, "succeeded", "val", "0.75", ""),
        (JOB_ID, "succeeded", "test", "0.5", "0.25"),
    ]
    assert json.loads(cli("jobs", "show", JOB_ID, "-o", "json").out) == job()  # the API's body


# --- 8. -o applies with --follow ---------------------------------------------------------------------


def test_follow_prints_the_final_job_and_sweep_in_the_output_format(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    server.routes[("POST", "/jobs")] = httpx.Response(201, json=job("queued"))
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=job())
    server.routes[("GET", f"/jobs/{JOB_ID}/events")] = lambda r: events_response(
        [sse("0.A", "status", {"status": "running"}), sse("2.A", "end", {"status": "succeeded"})]
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"dataset_id: {DS_ID}\ntask: forecast\n")
    followed = cli("jobs", "submit", str(spec), "-f", "-o", "json")
    assert followed.code == 0, followed.err
    assert json.loads(followed.out)["id"] == JOB_ID and json.loads(followed.out)["status"] == "succeeded"
    as_csv = cli("jobs", "follow", JOB_ID, "-o", "csv")
    assert as_csv.code == 0 and as_csv.out.splitlines()[1].startswith(f"{JOB_ID},exp [/b],succeeded,")

    server.routes[("POST", "/sweeps")] = httpx.Response(201, json={**sweep(), "report": None})
    server.routes[("GET", "/sweeps/s1")] = httpx.Response(200, json=sweep())
    body = tmp_path / "sweep.yaml"
    body.write_text("base: {task: forecast}\ngrid: {}\n")
    swept = cli("sweeps", "submit", str(body), "-f", "-o", "json")
    assert swept.code == 0, swept.err
    record = json.loads(swept.out)
    assert record["id"] == "s1" and record["report"]["complete"]
    swept_csv = cli("sweeps", "submit", str(body), "-f", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(swept_csv.out)))
    assert [(r["sweep_id"], r["rank"], r["mean"]) for r in rows] == [("s1", "1", "0.5")]


# --- 2. follow through an API restart; a lost server is not "the job failed" ------------------------


def test_jobs_follow_rides_out_a_restart_and_exits_69_when_the_server_stays_away(cli: Any, server: FakeServer) -> None:
    running = job("running")
    streams = [
        ([sse("0.A", "status", {"status": "running"}), sse("1.A", "epoch", {"epoch": 1, "metrics": {}})], True),
        ([sse("2.A", "epoch", {"epoch": 2, "metrics": {}}), sse("2.A", "end", {"status": "succeeded"})], False),
    ]
    outage = {"left": 4}  # the API restarting: four refused requests after the stream drops

    def events(request: httpx.Request) -> httpx.Response:
        chunks, drop = streams.pop(0)
        if drop:
            server.down = True
        return events_response(chunks, drop)

    def get_job(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=running if streams else job())

    original = server.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if server.down:
            outage["left"] -= 1
            server.down = outage["left"] > 0
            server.requests.append(request)
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return original(request)

    server.handle = handle  # type: ignore[method-assign]
    server.routes[("GET", f"/jobs/{JOB_ID}")] = get_job
    server.routes[("GET", f"/jobs/{JOB_ID}/events")] = events
    followed = cli("jobs", "follow", JOB_ID)
    assert followed.code == 0, followed.err
    assert "lost the connection to rnnlab" in followed.err and "reconnected" in followed.err
    assert f"job {JOB_ID} succeeded" in followed.err
    assert server.sleeps and all(b >= a for a, b in zip(server.sleeps, server.sleeps[1:], strict=False))

    # the server never comes back: a minute of retries, then exit 69 (not 1, "failed")
    server.handle = original  # type: ignore[method-assign]
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=running)
    server.routes[("GET", f"/jobs/{JOB_ID}/events")] = lambda r: (
        setattr(server, "down", True) or events_response([sse("0.A", "status", {"status": "running"})], drop=True)
    )
    start = server.clock[0]
    lost = cli("jobs", "follow", JOB_ID)
    assert lost.code == EXIT_UNAVAILABLE == 69, lost.err
    assert "gave up following job" in lost.err and "Connection refused" in lost.err
    assert 60 <= server.clock[0] - start <= 61  # about a minute of trying, not one second
    assert "Traceback" not in lost.err


def test_sweeps_submit_follow_waits_through_an_outage(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    reads = {"n": 0}

    def get_sweep(request: httpx.Request) -> httpx.Response:
        reads["n"] += 1
        if reads["n"] in (2, 3):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        done = reads["n"] > 3
        return httpx.Response(
            200, json=sweep() if done else {**sweep(), "report": {**report("test"), "complete": False}}
        )

    server.routes[("POST", "/sweeps")] = httpx.Response(201, json={**sweep(), "report": None})
    server.routes[("GET", "/sweeps/s1")] = get_sweep
    body = tmp_path / "sweep.yaml"
    body.write_text("base: {task: forecast}\ngrid: {}\n")
    swept = cli("sweeps", "submit", str(body), "--follow")
    assert swept.code == 0, swept.err
    assert "lost the connection" in swept.err and "reconnected" in swept.err
    server.routes[("GET", "/sweeps/s1")] = lambda r: (_ for _ in ()).throw(
        httpx.ConnectError("[Errno 111] Connection refused", request=r)
    )
    lost = cli("sweeps", "submit", str(body), "--follow")
    assert lost.code == EXIT_UNAVAILABLE and "gave up waiting for sweep s1" in lost.err


# --- 10. jobs model -o: a model file, not an output format ------------------------------------------


def test_jobs_model_refuses_an_output_format_as_the_file(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    server.routes[("GET", f"/jobs/{JOB_ID}")] = httpx.Response(200, json=job())
    server.routes[("GET", f"/jobs/{JOB_ID}/model")] = lambda r: httpx.Response(200, content=b"model")
    for name in ("json", "csv", "TABLE", "model"):
        refused = cli("jobs", "model", JOB_ID, "-o", str(tmp_path / name))
        assert refused.code == 1 and "has no .pt, .onnx or .safetensors suffix" in refused.err
        assert ("not an output format" in refused.err) == (name != "model")
    assert not list(tmp_path.iterdir()) and not server.requests
    written = cli("jobs", "model", JOB_ID, "-o", str(tmp_path / "model"), "--format", "onnx")
    assert written.code == 0 and (tmp_path / "model").read_bytes() == b"model"
    assert server.requests[-1].url.params["format"] == "onnx"
    assert cli("jobs", "model", JOB_ID, "-o", str(tmp_path / "m.safetensors")).code == 0
    assert server.requests[-1].url.params["format"] == "safetensors"


# --- 12. smaller ones ------------------------------------------------------------------------------


def test_out_of_range_limits_are_usage_errors(cli: Any, server: FakeServer) -> None:
    assert cli("jobs", "list", "--limit", "-1").code == EXIT_USAGE
    assert cli("datasets", "leaderboard", DS_ID, "--limit", "0").code == EXIT_USAGE
    assert cli("datasets", "preview", DS_ID, "--rows", "0").code == EXIT_USAGE
    assert not server.requests  # refused before anything was sent


def test_details_are_printed_only_when_they_add_something(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    details = [{"field": f"data.f{i}", "message": f"bad {i}"} for i in range(7)]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    server.routes[("POST", "/jobs")] = error(422, "invalid_spec", message, details)
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: forecast\n")
    out = cli("jobs", "submit", str(spec))
    assert out.err.splitlines() == [f"error invalid_spec: {message}", "  data.f5: bad 5", "  data.f6: bad 6"]


@pytest.mark.parametrize(
    ("yaml", "field", "says"),
    [
        ("name: 123\n", "name", "the number 123"),
        ("data: {target: no}\n", "data.target", "the boolean false"),
        ("data: {features: [1.5]}\n", "data.features.0", "the number 1.5"),
    ],
)
def test_numbers_and_booleans_where_a_string_is_expected_get_the_quote_hint(
    cli: Any, server: FakeServer, tmp_path: Path, yaml: str, field: str, says: str
) -> None:
    details = [{"field": field, "message": "Input should be a valid string", "type": "string_type"}]
    server.routes[("POST", "/jobs")] = error(422, "invalid_spec", f"{field}: Input should be a valid string", details)
    server.routes[("POST", "/sweeps")] = error(
        422, "invalid_spec", f"base.{field}: Input should be a valid string", [{**details[0], "field": f"base.{field}"}]
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"task: forecast\n{yaml}")
    out = cli("jobs", "submit", str(spec))
    assert out.code == 1 and says in out.err and "quote it to give a string" in out.err, out.err
    body = tmp_path / "sweep.yaml"
    body.write_text("base:\n" + "".join(f"  {line}\n" for line in spec.read_text().splitlines()))
    swept = cli("sweeps", "submit", str(body))
    assert swept.code == 1 and says in swept.err and "quote it" in swept.err, swept.err


def test_an_api_key_with_a_trailing_newline_works_and_a_bad_one_is_never_echoed(cli: Any, server: FakeServer) -> None:
    server.routes[("GET", "/jobs")] = httpx.Response(200, json={"items": [], "next_cursor": None})
    assert cli("jobs", "--api-key", "rnl_secret123\n", "list").code == 0
    assert server.requests[-1].headers["authorization"] == "Bearer rnl_secret123"
    bad = cli("jobs", "--api-key", "rnl_sec ret123", "list")
    assert bad.code == 1 and "space or a control character" in bad.err and "ret123" not in bad.err
    assert "connection_error" not in bad.err


def test_the_quote_hint_finds_a_swept_value(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    field = "grid.data.target[1]"  # as the API names a grid value that failed
    details = [{"field": field, "message": "Input should be a valid string", "type": "string_type"}]
    server.routes[("POST", "/sweeps")] = error(422, "invalid_spec", f"{field}: Input should be a valid string", details)
    body = tmp_path / "sweep.yaml"
    body.write_text("base: {task: forecast}\ngrid: {data.target: [value, on]}\n")
    swept = cli("sweeps", "submit", str(body))
    assert swept.code == 1 and "the boolean true" in swept.err and "quote it" in swept.err, swept.err


def test_a_sweep_setting_cell_reads_like_every_other_cell() -> None:
    """A tpe search's setting printed its learning rate to 17 digits, its paths in proposal order."""
    from rnnlab.output import cell, csv_cell

    setting = {"training.learning_rate": 0.0052150863871942895, "model.hidden_size": 8, "model.cell": "gru"}
    assert cell(setting) == "model.cell=gru, model.hidden_size=8, training.learning_rate=0.005215"
    assert '"training.learning_rate":0.0052150863871942895' in csv_cell(setting)  # CSV keeps it exact
