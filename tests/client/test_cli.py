"""The user CLI (``rnnlab datasets|jobs|sweeps|spec|predict``) as a user runs it, against the real
embedded service: a subprocess per command, one of them under a pseudo-terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest
import torch

from rnnlab import Client
from tests.client.conftest import Served
from tests.stack import ROOT, forecast_spec, sine_csv

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# One served stack (API on a port + a worker process) for the module: grouped for `--dist loadgroup` (see Makefile).
pytestmark = pytest.mark.xdist_group("client-cli")


def cli_env(served: Served) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    return {**env, **served.env, "COLUMNS": "200"}


def rnnlab(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=cli_env(served),
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_in_terminal(served: Served, *args: str, timeout: float = 180) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin/stdout/stderr; its exit code and everything it drew."""
    master, slave = pty.openpty()
    env = {**cli_env(served), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode(errors="replace")


def test_cli_walkthrough(served: Served, tmp_path: Path) -> None:
    data = tmp_path / "sine.csv"
    data.write_text(sine_csv(300))
    uploaded = rnnlab(served, "datasets", "upload", str(data), "--output", "json")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = json.loads(uploaded.stdout)["id"]

    spec = tmp_path / "spec.yaml"
    spec_body = forecast_spec(dataset_id)
    spec.write_text(
        "\n".join(
            [
                f"dataset_id: {dataset_id}",
                "task: forecast",
                "data: {layout: series, target: value, features: [value], lookback: 12}",
                "model: {cell: gru, hidden_size: 8}",
                f"training: {json.dumps(spec_body['training'])}",
                "evaluation: {bootstrap_samples: 50, attribution: false}",
            ]
        )
    )
    code, screen = run_in_terminal(served, "jobs", "submit", str(spec), "--follow")
    text = ANSI.sub("", screen)
    assert code == 0, screen
    job_id = re.search(r"submitted job (\S+)", text).group(1)  # type: ignore[union-attr]
    # The live bar was drawn for a terminal (escape codes), redrawn per epoch, and ended at 3/3
    # with the latest training loss and validation metric.
    assert "\x1b[" in screen
    assert "3/3 epochs" in text and re.search(r"loss \d", text) and re.search(r"val rmse \d", text), text
    assert f"job {job_id} succeeded" in text

    listed = rnnlab(served, "jobs", "list", "--where", "test.rmse < 1000", "--sort", "test.rmse", "--output", "json")
    assert listed.returncode == 0 and job_id in {j["id"] for j in json.loads(listed.stdout)}
    shown = rnnlab(served, "jobs", "show", job_id, "--output", "json")
    assert json.loads(shown.stdout)["status"] == "succeeded"
    metrics = list(csv.DictReader(io.StringIO(rnnlab(served, "jobs", "metrics", job_id, "--output", "csv").stdout)))
    assert [row["epoch"] for row in metrics] == ["1", "2", "3"] and float(metrics[-1]["train.loss"]) > 0
    # CSV carries the numbers exactly as the API sent them (tables round to 4 digits, CSV must not).
    series = json.loads(rnnlab(served, "jobs", "metrics", job_id, "--output", "json").stdout)["series"]
    train_loss = next(s for s in series if s["split"] == "train" and s["name"] == "loss")["values"]
    assert [float(row["train.loss"]) for row in metrics] == train_loss

    table = rnnlab(served, "jobs", "evaluation", job_id)
    assert table.returncode == 0, table.stderr
    assert "95% CI on test" in table.stdout and "ci_low" in table.stdout
    assert re.search(r"naive .*(beats|does not beat)", table.stdout), table.stdout
    # each baseline's paired interval of model − baseline, rounded like the other cells
    assert "difference_ci" in table.stdout and re.search(r"naive .*\[-?[0-9.e-]+, -?[0-9.e-]+\]", table.stdout)
    evaluation_csv = rnnlab(served, "jobs", "evaluation", job_id, "--output", "csv").stdout
    assert evaluation_csv.splitlines()[0] == "metric,train,val,test,ci_low,ci_high"

    model = tmp_path / "model.onnx"
    downloaded = rnnlab(served, "jobs", "model", job_id, "-o", str(model))
    assert downloaded.returncode == 0 and model.read_bytes()[:2] != b"PK"  # ONNX (protobuf), not a torch zip

    # Offline: no server involved; the same windows through the server's /predict agree.
    predictions = tmp_path / "predictions.csv"
    offline = rnnlab(served, "predict", "--model", str(model), "--input", str(data), "-o", str(predictions))
    assert offline.returncode == 0, offline.stderr
    result = pcsv.read_csv(predictions)
    assert result.column_names == ["row", "prediction"] and result.num_rows == 300 - 12 + 1
    values = np.loadtxt(io.StringIO(data.read_text()), delimiter=",", skiprows=1)[:, 1]
    last_windows = np.stack([values[end - 11 : end + 1] for end in (287, 298, 299)])
    served_predictions = Client(served.url, served.api_key).jobs.get(job_id).predict(last_windows)
    rows = result.column("row").to_pylist()
    offline_values = [result.column("prediction")[rows.index(end)].as_py() for end in (287, 298, 299)]
    np.testing.assert_allclose(offline_values, np.asarray(served_predictions)[:, 0], rtol=1e-4, atol=1e-4)

    # No windows in the file, or an output path that cannot be a file: one line, exit 1.
    empty = tmp_path / "empty.csv"
    empty.write_text("t,value\n")
    for model_file in (model, tmp_path / "model.pt"):
        if not model_file.exists():
            assert rnnlab(served, "jobs", "model", job_id, "-o", str(model_file)).returncode == 0
        for args in (("--input", str(empty)), ("--input", str(data), "-o", str(tmp_path))):
            refused = rnnlab(served, "predict", "--model", str(model_file), *args)
            assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    to_stdout = rnnlab(served, "predict", "--model", str(model), "--input", str(data), "-o", "-")
    assert to_stdout.returncode == 0 and to_stdout.stdout.startswith('"row","prediction"'), to_stdout.stdout[:80]
    assert not (ROOT / "-").exists()
    upper = tmp_path / "MODEL.ONNX"  # the suffix picks the format whatever its case
    assert rnnlab(served, "jobs", "model", job_id, "-o", str(upper)).returncode == 0
    assert upper.read_bytes() == model.read_bytes()

    schema = json.loads(rnnlab(served, "spec", "schema").stdout)
    assert {"dataset_id", "task", "data", "model", "training"} <= set(schema["properties"])

    missing = rnnlab(served, "jobs", "show", "does-not-exist")
    assert missing.returncode == 1 and "job_not_found" in missing.stderr and "Traceback" not in missing.stderr


def test_follow_exit_codes_for_cancelled_and_failed_jobs(served: Served, tmp_path: Path) -> None:
    dataset_id = served.stack.upload_csv("long.csv", sine_csv(300))
    long_spec = tmp_path / "long.json"
    long_spec.write_text(json.dumps(forecast_spec(dataset_id, epochs=5000, early_stopping_patience=None)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "jobs", "submit", str(long_spec), "--follow"],
        cwd=ROOT,
        env=cli_env(served),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Client(served.url, served.api_key)
    try:
        deadline = time.monotonic() + 120
        running = None
        while running is None and time.monotonic() < deadline:
            running = next(iter(client.jobs.list(status="running", limit=1)), None)
            time.sleep(0.2)
        assert running is not None, "the job never started"
        running.cancel()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    assert "cancelled" in stderr

    # A job the worker cannot run (CUDA on a machine without it) fails: exit code 1 with its reason.
    cuda_spec = tmp_path / "cuda.json"
    cuda_spec.write_text(json.dumps({**forecast_spec(dataset_id), "device": "cuda"}))
    failed = rnnlab(served, "jobs", "submit", str(cuda_spec), "--follow")
    if torch.cuda.is_available():
        assert failed.returncode == 0, failed.stderr
    else:
        assert failed.returncode == 1 and "device_unavailable" in failed.stderr, failed.stderr


def test_spec_errors_are_one_line_with_the_field(served: Served, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("task: forecast\ndataset_id: x\ndata: {layout: series}\n")
    out = rnnlab(served, "jobs", "submit", str(spec))
    assert out.returncode == 1 and "invalid_spec" in out.stderr and "data.target" in out.stderr
    spec.write_text("- not a mapping\n")
    out = rnnlab(served, "jobs", "submit", str(spec))
    assert out.returncode == 1 and "must hold a mapping" in out.stderr and "Traceback" not in out.stderr


def test_names_with_brackets_are_printed_verbatim(served: Served, tmp_path: Path) -> None:
    """Rich reads "[/eur]" as a closing tag: user and server text must never be parsed as markup."""
    data = tmp_path / "prices.csv"
    data.write_text("t,price[usd]\n" + "".join(f"{i},{i / 10}\n" for i in range(50)))
    uploaded = rnnlab(served, "datasets", "upload", str(data), "--name", "prices [/eur]", "--output", "json")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = json.loads(uploaded.stdout)["id"]
    for args in (("datasets", "list"), ("datasets", "show", dataset_id), ("datasets", "preview", dataset_id)):
        out = rnnlab(served, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert ("price[usd]" if args[1] == "preview" else "prices [/eur]") in out.stdout
    spec = tmp_path / "[bold]spec.yaml"
    spec.write_text(f"dataset_id: {dataset_id}\ntask: forecast\ndata: {{layout: series, target: '[/x]'}}\n")
    refused = rnnlab(served, "jobs", "submit", str(spec))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "[/x]" in refused.stderr and "price[usd]" in refused.stderr, refused.stderr


@pytest.mark.parametrize("output", ["table", "json", "csv"])
def test_read_commands_take_every_output_format(served: Served, output: str) -> None:
    for args in (("datasets", "list"), ("jobs", "list"), ("sweeps", "list")):
        out = rnnlab(served, *args, "--output", output)
        assert out.returncode == 0, out.stderr
        if output == "json":
            assert isinstance(json.loads(out.stdout), list)
        if output == "csv":
            assert out.stdout.splitlines()[0].startswith("id,")


def test_sweeps_submit_follow_show_report(served: Served, tmp_path: Path) -> None:
    dataset_id = served.stack.upload_csv("sweep-cli.csv", sine_csv(200))
    body = tmp_path / "sweep.yaml"
    base = {**forecast_spec(dataset_id), "training": {"epochs": 2, "batch_size": 32}}
    body.write_text(json.dumps({"name": "seeds", "base": base, "grid": {"model.hidden_size": [4]}, "seeds": [0, 1]}))
    followed = rnnlab(served, "sweeps", "submit", str(body), "--follow", "--output", "json")
    assert followed.returncode == 0, followed.stderr
    record = json.loads(followed.stdout)  # the whole sweep once it has ended, its report inside
    report = record["report"]
    assert report["complete"] and report["settings"][0]["n"] == 2
    sweep_id = re.search(r"submitted sweep (\S+)", followed.stderr).group(1)  # type: ignore[union-attr]
    assert record["id"] == sweep_id
    jobs = list(csv.DictReader(io.StringIO(rnnlab(served, "sweeps", "show", sweep_id, "--output", "csv").stdout)))
    assert [row["status"] for row in jobs] == ["succeeded", "succeeded"]
    table = rnnlab(served, "sweeps", "report", sweep_id)
    assert table.returncode == 0 and "test rmse over seeds" in table.stdout and "2/2 jobs succeeded" in table.stdout

    board = json.loads(rnnlab(served, "datasets", "leaderboard", dataset_id, "--output", "json").stdout)
    assert board["metric"] == "test.rmse" and len(board["items"]) == 2
    assert "test.rmse (lower is better)" in rnnlab(served, "datasets", "leaderboard", dataset_id).stdout
    cancelled = rnnlab(served, "sweeps", "cancel", sweep_id, "--output", "json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["cancelled"] == 0  # nothing left to cancel
    assert rnnlab(served, "sweeps", "delete", sweep_id).returncode == 0
    gone = rnnlab(served, "sweeps", "show", sweep_id)
    assert gone.returncode == 1 and "sweep_not_found" in gone.stderr

    if not torch.cuda.is_available():  # every job fails (no GPU here): --follow exits 1, as for a job
        body.write_text(json.dumps({"base": {**base, "device": "cuda"}, "grid": {}, "seeds": [0]}))
        failed = rnnlab(served, "sweeps", "submit", str(body), "--follow")
        assert failed.returncode == 1 and "no job of the sweep succeeded" in failed.stderr, failed.stderr
