"""What the CLI and the client do with bad files, odd ids and bad URLs, without a server: one line on
stderr and a documented exit code, never a traceback (subprocesses, as a user runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from rnnlab import Client, load_model
from rnnlab.cli import EXIT_USAGE
from tests.stack import ROOT

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers


def cli(*args: str, url: str = NOWHERE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update(RNNLAB_URL=url, RNNLAB_API_KEY="rnl_test", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def one_line_error(out: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.strip(), out.stderr
    return out.stderr


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: 2024-01-01\ntask: forecast\n", "name is read as a date"),
        ("name: 2024-01-01 10:00:00\n", "name is read as a datetime"),
        ("task: forecast\ndata: {lookback: !!binary aGVsbG8=}\n", "data.lookback is read as a bytes"),
        ("grid: {2020-01-01: [1]}\n", "must be a string"),
        ("base: 5\ngrid: {}\n", "base must be a job spec"),
        ("base: [1, 2]\n", "base must be a job spec"),
        ("- a list\n", "must hold a mapping"),
        ("name: [unclosed\n", "is not valid YAML"),
    ],
)
def test_spec_files_yaml_cannot_send_as_json_are_named(tmp_path: Path, text: str, says: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    for command in (("jobs", "submit"), ("sweeps", "submit")):
        assert says in one_line_error(cli(*command, str(spec)))


def test_json_and_encoding_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text('{"task": }')
    assert f"{bad} is not valid JSON" in one_line_error(cli("jobs", "submit", str(bad)))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8 text" in one_line_error(cli("jobs", "submit", str(latin)))


def test_usage_errors_exit_64_so_2_stays_cancelled_or_pruned(tmp_path: Path) -> None:
    missing = cli("jobs", "submit", str(tmp_path / "nope.yaml"), "--follow")
    assert missing.returncode == EXIT_USAGE == 64 and "does not exist" in missing.stderr
    assert cli("jobs", "list", "--output", "xml").returncode == EXIT_USAGE
    assert cli("jobs", "list", "--no-such-option").returncode == EXIT_USAGE


def test_bad_urls_and_keys_are_one_line() -> None:
    assert "is not a valid URL" in one_line_error(cli("jobs", "list", url="http://[::1"))
    assert "must start with http:// or https://" in one_line_error(cli("jobs", "list", url="ftp://example.org"))
    assert "connection_error" in one_line_error(cli("jobs", "list"))
    with pytest.raises(ValueError, match="outside ASCII"):
        Client(NOWHERE, "rnl_ключ")


def test_ids_are_one_path_segment_and_must_not_be_empty() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"id": "x", "status": "queued"})

    http = httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler))
    client = Client("http://rnnlab.test", "k", http=http)
    client.jobs.get("../datasets")
    client.jobs.get("a?b#c")
    client.datasets.preview("d/1", rows=3)
    assert asked == ["/api/v1/jobs/..%2Fdatasets", "/api/v1/jobs/a%3Fb%23c", "/api/v1/datasets/d%2F1/preview?rows=3"]
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="job id must be a non-empty string"):
            client.jobs.get(empty)
    with pytest.raises(TypeError, match="must be a mapping"):
        client.jobs.submit([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="POST /jobs: the body holds NaN or infinity"):
        client.jobs.submit({"dataset_id": "d", "training": {"learning_rate": float("nan")}})
    assert "job id must be a non-empty string" in one_line_error(cli("jobs", "show", ""))


def test_a_tpe_sweep_is_not_done_while_its_search_goes_on() -> None:
    """Between two trials every job so far can have ended; the report's ``complete`` says whether the
    search has more to ask, and ``wait`` waits for it."""
    bodies = [
        {"id": "s", "search": "tpe", "progress": {"total": 2, "finished": 2}, "report": {"complete": False}},
        {"id": "s", "search": "tpe", "progress": {"total": 3, "finished": 3}, "report": {"complete": True}},
    ]
    reads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        reads.append(1)
        return httpx.Response(200, json=bodies[min(len(reads), 2) - 1])

    http = httpx.Client(base_url="http://rnnlab.test", transport=httpx.MockTransport(handler))
    sweep = Client("http://rnnlab.test", "k", http=http).sweeps.get("s")
    assert not sweep.done
    assert sweep.wait(poll_seconds=0).info["progress"]["total"] == 3 and sweep.done


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("junk.onnx", b"not a protobuf at all"),
        ("junk.pt", b"PK\x03\x04 not really a zip"),
        ("empty.pt", b""),
        ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx"),
        ("list.pt", None),  # a real torch file that holds a list
    ],
)
def test_unreadable_model_files_are_one_line(tmp_path: Path, name: str, content: bytes | None) -> None:
    import torch

    model = tmp_path / name
    if content is None:
        torch.save([1, 2, 3], model)
    else:
        model.write_bytes(content)
    data = tmp_path / "in.csv"
    data.write_text("t,value\n0,1.0\n")
    err = one_line_error(cli("predict", "--model", str(model), "--input", str(data)))
    assert f"{name} is not a" in err and "rnnlab" in err
    with pytest.raises(ValueError, match="is not a"):
        load_model(model)


def test_predict_output_must_be_csv_or_parquet(tmp_path: Path) -> None:
    model, data = tmp_path / "m.onnx", tmp_path / "in.csv"
    model.write_bytes(b"x")
    data.write_text("t,value\n0,1.0\n")
    for out in ("p.json", "p.txt"):
        err = one_line_error(cli("predict", "--model", str(model), "--input", str(data), "-o", str(tmp_path / out)))
        assert "predictions are written as .csv or .parquet" in err


def test_zero_input_windows_are_refused_before_the_model_runs() -> None:
    from worker.engine.errors import DataError
    from worker.engine.predictor import check_inputs

    with pytest.raises(DataError, match="no input windows"):
        check_inputs(np.zeros((0, 6, 2), dtype=np.float32), 6, ["a", "b"])


def test_model_download_suffix_and_format_must_agree(tmp_path: Path) -> None:
    """The loaders and `rnnlab predict` read a model's format off its suffix: no .pt in m.txt."""
    assert "ends in .pt, .onnx or .safetensors" in one_line_error(
        cli("jobs", "model", "j1", "-o", str(tmp_path / "m.txt"))
    )
    assert "says onnx but --format says pt" in one_line_error(
        cli("jobs", "model", "j1", "-o", str(tmp_path / "m.onnx"), "--format", "pt")
    )
    assert "is a directory" in one_line_error(cli("jobs", "model", "j1", "-o", str(tmp_path)))
    assert not list(tmp_path.iterdir())  # nothing written, and no server was asked (none answers)
