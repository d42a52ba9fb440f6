"""The user commands of ``rnnlab`` (datasets, jobs, sweeps, spec, predict), built on ``Client``.

``app.cli`` mounts these next to the server commands; ``register(app)`` is the one entry point.
Every read command takes ``--output table|json|csv``; errors print the API's code and message
on stderr and exit 1 (a usage error, such as an unknown option, exits 64). ``jobs submit --follow``
and ``jobs follow`` exit 0 when the job succeeded, 1 when it failed, 2 when it was cancelled or
pruned; ``sweeps submit --follow`` exits 1 when no job of the sweep succeeded. A follow that cannot
reach the server (it reconnects for a minute first) exits 69, so that 1 keeps meaning "failed".

Names, messages and every other text of the user or the server are printed verbatim, never read as
rich markup; messages are not wrapped (a pipe or a CI log gets one line per message).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from rnnlab.client import MODEL_FORMATS, Client, Job, model_format
from rnnlab.errors import RnnlabError
from rnnlab.output import OutputFormat, print_json, print_rows, progress_console

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_STOPPED = 0, 1, 2
# A usage error (an unknown option, a missing file argument) exits 64, EX_USAGE of sysexits.h, not
# click's 2: with --follow, 2 means the job was cancelled or pruned.
EXIT_USAGE = 64
# --follow when the server stays unreachable (after a minute of reconnecting): EX_UNAVAILABLE, not 1,
# which means the job failed.
EXIT_UNAVAILABLE = 69
FOLLOW_EXIT_CODES = {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED, "cancelled": EXIT_STOPPED, "pruned": 2}

# Messages on stderr: soft_wrap, so a long one stays one line in a pipe or a CI log (rich would
# otherwise break it at 80 columns with real newlines); a terminal wraps it on screen by itself.
stderr = Console(stderr=True, soft_wrap=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def say(message: str | Text) -> None:
    """One line on stderr; a string is printed verbatim (user and server text is never markup)."""
    stderr.print(message, markup=False)


def say_error(message: str) -> None:
    say(Text.assemble(("error", "red"), " ", message))


# Help texts are rich markup for typer: brackets must be escaped to show.
Output = Annotated[OutputFormat, typer.Option("--output", "-o", help="table, json or csv.")]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="RNNLAB_URL", help=escape("Server URL [env RNNLAB_URL; default http://127.0.0.1:8000].")
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RNNLAB_API_KEY", help=escape("API key [env RNNLAB_API_KEY].")),
]


def _details_lines(exc: RnnlabError) -> list[str]:
    """The error's per-field details that the message does not already say (the API's message holds
    the first few as ``field: message``)."""
    lines = []
    if isinstance(exc.details, list):
        for detail in exc.details[:10]:
            if isinstance(detail, dict) and detail.get("field"):
                field, message = str(detail["field"]), str(detail.get("message", ""))
                line = f"{field}: {message.removeprefix(f'{field}: ')}"
                if line not in exc.message:
                    lines.append(line)
    return lines


@contextmanager
def reported_errors(unreachable: int = EXIT_FAILED) -> Iterator[None]:
    """API errors and bad files as one line on stderr and exit code 1, never a traceback.

    ``unreachable``: the exit code when the server could not be reached (``connection_error``);
    the follow commands pass ``EXIT_UNAVAILABLE``, 1 being "the job failed" there."""
    try:
        yield
    except RnnlabError as exc:
        say_error(f"{exc.code}: {exc.message}")
        for line in _details_lines(exc):
            say(f"  {line}")
        raise typer.Exit(unreachable if exc.status_code == 0 else EXIT_FAILED) from None
    except (OSError, ValueError, TypeError) as exc:
        say_error(str(exc))
        raise typer.Exit(1) from None


def _client(ctx: typer.Context) -> Client:
    url, key = ctx.obj if isinstance(ctx.obj, tuple) else (None, None)
    return Client(url, key)


def _connect(ctx: typer.Context, url: str | None, api_key: str | None) -> None:
    ctx.obj = (url, api_key)


def group(help_text: str) -> typer.Typer:
    sub = typer.Typer(help=help_text, no_args_is_help=True)

    @sub.callback()
    def _options(ctx: typer.Context, url: UrlOption = None, api_key: KeyOption = None) -> None:
        _connect(ctx, url, api_key)

    return sub


datasets_app = group("Upload and inspect datasets.")
jobs_app = group("Submit, follow and inspect training jobs; export their models.")
sweeps_app = group("Hyperparameter and seed sweeps: submit, follow, report.")
spec_app = typer.Typer(help="Job spec helpers.", no_args_is_help=True)


def load_document(path: Path) -> dict[str, Any]:
    """A YAML or JSON file (by suffix; YAML otherwise, which also reads JSON) as a dict."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping (a JSON object), not {type(data).__name__}")
    if isinstance(data.get("base"), list | str | int | float | bool):
        raise ValueError(f"{path}: base must be a job spec (a mapping), not {type(data['base']).__name__}")
    _json_values(data, path, "")
    return data


def _json_values(value: Any, path: Path, where: str) -> None:
    """Refuse what YAML reads but JSON cannot carry (dates, times, binary), naming where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: key {key!r}{f' in {where}' if where else ''} must be a string; quote it")
            _json_values(item, path, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_values(item, path, f"{where}[{i}]")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(f"{path}: {where} is read as a {type(value).__name__} ({value!r}); quote it to give a string")


def _value_at(document: Any, parts: list[str]) -> Any:
    """The value at a dotted field path of the API's details (``data.target``, ``base.name``,
    ``data.features.0``, ``grid.model.hidden_size``: keys may hold dots themselves); ``...`` if none."""
    if not parts:
        return document
    if isinstance(document, dict):
        for end in range(len(parts), 0, -1):  # the longest key first
            key = ".".join(parts[:end])
            if key in document:
                found = _value_at(document[key], parts[end:])
                if found is not ...:
                    return found
        return ...
    if isinstance(document, list) and parts[0].isdigit() and int(parts[0]) < len(document):
        return _value_at(document[int(parts[0])], parts[1:])
    return ...


@contextmanager
def quoting_hints(document: dict[str, Any]) -> Iterator[None]:
    """A 422 about a field that must be a string, whose value YAML read as a number or a boolean
    (``name: 123``, ``target: no``): its detail says so and to quote it, as for a date."""
    try:
        yield
    except RnnlabError as exc:
        for detail in exc.details if isinstance(exc.details, list) else []:
            if not isinstance(detail, dict) or "valid string" not in str(detail.get("message", "")):
                continue
            field = re.sub(r"\[(\d+)\]", r".\1", str(detail.get("field") or ""))
            value = _value_at(document, [part for part in field.split(".") if part])
            if isinstance(value, bool | int | float):
                kind = "boolean" if isinstance(value, bool) else "number"
                detail["message"] = (
                    f"{detail.get('message')} (the file gives the {kind} {json.dumps(value)}: "
                    "YAML reads unquoted yes/no/on/off/true/false and numbers so; quote it to give a string)"
                )
        raise


# --- datasets ------------------------------------------------------------------------------------

DATASET_COLUMNS = ["id", "name", "format", "size_bytes", "num_rows", "created_at"]


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".csv, .csv.gz, .parquet or .npz")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the file name).")] = None,
    output: Output = OutputFormat.table,
) -> None:
    """Upload a file (streamed, with a progress bar); prints the new dataset."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with (
        reported_errors(),
        Progress(
            TextColumn("{task.description}", style="progress.description", markup=False),  # the file's name
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=progress_console(),
        ) as bar,
    ):
        task = bar.add_task(f"upload {file.name}", total=file.stat().st_size)
        dataset = _client(ctx).datasets.upload(
            file, name=name, progress=lambda sent, total: bar.update(task, completed=sent, total=total)
        )
    print_rows([dataset], DATASET_COLUMNS, output, raw=dataset)


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, output: Output = OutputFormat.table) -> None:
    """The project's datasets, newest first."""
    with reported_errors():
        items = list(_client(ctx).datasets.list())
    print_rows(items, DATASET_COLUMNS, output, raw=items)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: str, output: Output = OutputFormat.table) -> None:
    """A dataset and its columns (or arrays)."""
    with reported_errors():
        dataset = _client(ctx).datasets.get(dataset_id)
    if output != OutputFormat.table:
        if dataset.get("columns"):
            print_rows(dataset["columns"], ["name", "dtype", "missing"], output, raw=dataset)
        else:
            arrays = [{"array": k, "shape": v} for k, v in (dataset.get("arrays") or {}).items()]
            print_rows(arrays, ["array", "shape"], output, raw=dataset)
        return
    print_rows([dataset], DATASET_COLUMNS + ["sha256"], output)
    if dataset.get("columns"):
        print_rows(dataset["columns"], ["name", "dtype", "missing"], output, title="columns")
    if dataset.get("arrays"):
        print_rows([{"array": k, "shape": v} for k, v in dataset["arrays"].items()], ["array", "shape"], output)


@datasets_app.command("preview")
def datasets_preview(
    ctx: typer.Context,
    dataset_id: str,
    rows: Annotated[int, typer.Option(min=1, max=1000, help="Rows to show (1–1000).")] = 20,
    output: Output = OutputFormat.table,
) -> None:
    """The first rows of a table (or the head of each array)."""
    with reported_errors():
        preview = _client(ctx).datasets.preview(dataset_id, rows)
    if preview.get("rows") is not None:
        columns = [c["name"] for c in preview.get("columns") or []] or list((preview["rows"] or [{}])[0])
        print_rows(preview["rows"], columns, output, raw=preview)
    else:
        arrays = preview.get("arrays") or {}
        print_rows(
            [{"array": k, **v} for k, v in arrays.items()], ["array", "shape", "dtype", "head"], output, raw=preview
        )


@datasets_app.command("leaderboard")
def datasets_leaderboard(
    ctx: typer.Context,
    dataset_id: str,
    metric: Annotated[str, typer.Option(help="A final metric: test.rmse, test.accuracy, val.mae, …")] = "test.rmse",
    limit: Annotated[int, typer.Option(min=1, max=500, help="The best this many jobs (1–500).")] = 10,
    output: Output = OutputFormat.table,
) -> None:
    """The dataset's best succeeded jobs by a final metric, best first."""
    with reported_errors():
        board = _client(ctx).datasets.leaderboard(dataset_id, metric, limit)
    rows = [{**item, "ci": item.get("interval")} for item in board["items"]]
    direction = "lower" if board.get("lower_is_better") else "higher"
    columns = ["rank", "job_id", "name", "cell", "value", "ci", "sweep_id"]
    print_rows(rows, columns, output, title=f"{board['metric']} ({direction} is better)", raw=board)


@datasets_app.command("delete")
def datasets_delete(ctx: typer.Context, dataset_id: str) -> None:
    """Delete a dataset (refused while a queued or running job uses it; a sweep's jobs go with
    ``rnnlab sweeps delete``)."""
    with reported_errors():
        _client(ctx).datasets.delete(dataset_id)
    say(f"deleted dataset {dataset_id}")


# --- jobs ----------------------------------------------------------------------------------------

JOB_COLUMNS = ["id", "name", "status", "cell", "epoch", "main", "created_at"]


def job_row(info: dict[str, Any]) -> dict[str, Any]:
    """A job as one flat row: the main test metric (rmse; accuracy for classification and tagging) as
    ``name=value``."""
    spec, summary = info.get("spec") or {}, info.get("summary") or {}
    test = summary.get("test") or {}
    name = "accuracy" if spec.get("task") in ("classification", "tagging") else "rmse"
    main = (name, test[name]) if name in test else None
    progress = info.get("progress") or {}
    return {
        "id": info["id"],
        "name": info.get("name"),
        "status": info["status"],
        "cell": (spec.get("model") or {}).get("cell"),
        "epoch": f"{progress.get('epoch', 0)}/{progress.get('epochs', 0)}",
        "main": f"{main[0]}={main[1]:.4g}" if main and isinstance(main[1], float) else None,
        "created_at": info.get("created_at"),
        "sweep_id": info.get("sweep_id"),
    }


def follow_job(job: Job, output: OutputFormat) -> int:
    """Follow with a live progress bar on stderr, then print the finished job on stdout in ``output``
    (json: the ``GET /jobs/{id}`` body); the exit code for the job's final status."""
    job.wait(progress=True)
    print_rows([job_row(job.info)], JOB_COLUMNS, output, raw=job.info)
    return FOLLOW_EXIT_CODES.get(job.status, EXIT_FAILED)


@jobs_app.command("submit")
def jobs_submit(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JobSpec in YAML or JSON.")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Override the spec's dataset_id.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show progress until the job ends; exit 0/1/2.")
    ] = False,
    output: Output = OutputFormat.table,
) -> None:
    """Submit a job spec; prints the job (with --follow: once it has ended). With --follow: exit 0
    succeeded, 1 failed, 2 cancelled or pruned, 69 server unreachable."""
    with reported_errors(EXIT_UNAVAILABLE if follow else EXIT_FAILED):
        spec = load_document(spec_file)
        if dataset:
            spec["dataset_id"] = dataset
        with quoting_hints(spec):
            job = _client(ctx).jobs.submit(spec)
        if not follow:
            print_rows([job_row(job.info)], JOB_COLUMNS, output, raw=job.info)
            return
        say(f"submitted job {job.id}")
        code = follow_job(job, output)
    raise typer.Exit(code)


@jobs_app.command("follow")
def jobs_follow(ctx: typer.Context, job_id: str, output: Output = OutputFormat.table) -> None:
    """Show a job's progress until it ends, then print it; exit 0 succeeded, 1 failed, 2 cancelled or
    pruned, 69 server unreachable."""
    with reported_errors(EXIT_UNAVAILABLE):
        code = follow_job(_client(ctx).jobs.get(job_id), output)
    raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    where: Annotated[
        str | None, typer.Option(help='Filter, e.g. \'test.rmse < 0.5 and model.cell in ("lstm","gru")\'.')
    ] = None,
    sort: Annotated[str | None, typer.Option(help="e.g. test.rmse or -created_at (the default).")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Repeatable: queued, running, succeeded, …")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only jobs on this dataset.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Only jobs of this sweep.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many jobs (0: all).")] = 50,
    output: Output = OutputFormat.table,
) -> None:
    """Jobs, newest first unless --sort says otherwise."""
    with reported_errors():
        jobs = _client(ctx).jobs.list(
            where=where, sort=sort, status=status, dataset_id=dataset, sweep_id=sweep, limit=limit or None
        )
        infos = [job.info for job in jobs]
    print_rows([job_row(i) for i in infos], JOB_COLUMNS, output, raw=infos)


# `jobs show -o csv`: the job's own fields on every row, then one row per split with final metrics.
SHOW_CSV_COLUMNS = ["id", "name", "status", "cell", "epoch", "created_at", "sweep_id", "error", "split"]


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str, output: Output = OutputFormat.table) -> None:
    """A job: status, progress, final metrics per split, error. CSV: one row per split with final
    metrics (train, val, test), each led by the job's id, name, status, cell, epoch, created_at,
    sweep_id and error; one row with an empty split for a job without them (queued, running, failed)."""
    with reported_errors():
        info = _client(ctx).jobs.get(job_id).info
    summary = info.get("summary") or {}
    rows = [
        {"split": split, **values}
        for split in ("train", "val", "test")
        if isinstance(values := summary.get(split), dict) and values
    ]
    metric_names = list(dict.fromkeys(name for row in rows for name in row if name != "split"))
    error = info.get("error") or None
    error_text = f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else error
    if output == OutputFormat.json:
        print_json(info)
        return
    if output == OutputFormat.csv:
        own = {**job_row(info), "error": error_text}
        print_rows([{**own, **row} for row in rows] or [own], [*SHOW_CSV_COLUMNS, *metric_names], output)
        return
    print_rows([job_row(info)], [*JOB_COLUMNS, "sweep_id"], output)
    if error_text:
        say(Text(str(error_text), style="red"))
    if rows:
        print_rows(
            rows, ["split", *metric_names], output, title=f"final metrics (best epoch {summary.get('best_epoch')})"
        )


@jobs_app.command("metrics")
def jobs_metrics(ctx: typer.Context, job_id: str, output: Output = OutputFormat.table) -> None:
    """Per-epoch history: one row per epoch, one column per split.metric."""
    with reported_errors():
        body = _client(ctx).jobs.get(job_id).metrics()
    by_epoch: dict[int, dict[str, Any]] = {}
    names = []
    for series in body["series"]:
        name = f"{series['split']}.{series['name']}"
        names.append(name)
        for epoch, value in zip(series["epochs"], series["values"], strict=True):
            by_epoch.setdefault(epoch, {"epoch": epoch})[name] = value
    print_rows([by_epoch[e] for e in sorted(by_epoch)], ["epoch", *names], output, raw=body)


@jobs_app.command("evaluation")
def jobs_evaluation(ctx: typer.Context, job_id: str, output: Output = OutputFormat.table) -> None:
    """Test metrics with 95% bootstrap intervals, and whether the model beats each baseline."""
    with reported_errors():
        evaluation = _client(ctx).jobs.get(job_id).evaluation()
    metrics, intervals = evaluation.get("metrics") or {}, (evaluation.get("intervals") or {}).get("test") or {}
    rows = []
    for name in metrics.get("test") or {}:
        low_high = intervals.get(name) or [None, None]
        rows.append(
            {
                "metric": name,
                "train": (metrics.get("train") or {}).get(name),
                "val": (metrics.get("val") or {}).get(name),
                "test": metrics["test"][name],
                "ci_low": low_high[0],
                "ci_high": low_high[1],
            }
        )
    if output != OutputFormat.table:
        print_rows(rows, ["metric", "train", "val", "test", "ci_low", "ci_high"], output, raw=evaluation)
        return
    main = evaluation.get("main_metric")
    print_rows(
        rows,
        ["metric", "train", "val", "test", "ci_low", "ci_high"],
        output,
        title=f"metrics (main: {main}, 95% CI on test)",
    )
    comparison = evaluation.get("comparison") or {}
    baseline_rows = [
        {
            "baseline": name,
            "metric": c.get("metric"),
            "baseline_value": c.get("baseline"),
            "model": c.get("model"),
            "improvement": c.get("improvement"),
            "verdict": {True: "beats", False: "does not beat", None: "-"}[c.get("beats")]
            + (" (within noise)" if c.get("beats") and c.get("significant") is False else ""),
            "difference_ci": c.get("difference_interval"),
        }
        for name, c in comparison.items()
    ]
    if baseline_rows:
        print_rows(
            baseline_rows,
            ["baseline", "metric", "baseline_value", "model", "improvement", "verdict", "difference_ci"],
            output,
            title="baselines (test)",
        )
    matrix = evaluation.get("confusion_matrix")
    if matrix:
        labels = matrix["labels"]
        cm_rows = [
            {"true": label, **dict(zip(labels, row, strict=True))}
            for label, row in zip(labels, matrix["matrix"], strict=True)
        ]
        print_rows(cm_rows, ["true", *labels], output, title="confusion matrix (rows true, columns predicted)")
    for note in evaluation.get("notes") or []:
        say(f"note: {note}")


@jobs_app.command("model")
def jobs_model(
    ctx: typer.Context,
    job_id: str,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The model file to write: .pt, .onnx or .safetensors picks the format.")
    ],
    format_option: Annotated[
        str | None,
        typer.Option("--format", help="pt, onnx or safetensors: for a file name without a suffix (else from it)."),
    ] = None,
) -> None:
    """Download a succeeded job's model: pt, onnx (scalers folded in) or safetensors."""
    suffix = out.suffix.lower().lstrip(".")
    with reported_errors():
        # `rnnlab predict` and the loaders read the format off the suffix, so the two must agree
        if out.suffix and suffix not in MODEL_FORMATS:
            raise ValueError(f"--out {out}: a model file ends in .pt, .onnx or .safetensors")
        if out.suffix and format_option and format_option.lower() != suffix:
            raise ValueError(f"--out {out} says {suffix} but --format says {format_option}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; name the model file")
        if not out.suffix and not format_option:
            # `-o json` elsewhere picks an output format; here it would be a model file named "json"
            mistaken = ""
            if out.name.lower() in {f.value for f in OutputFormat}:
                mistaken = " (-o here names the model file, not an output format)"
            raise ValueError(
                f"--out {out} has no .pt, .onnx or .safetensors suffix{mistaken}: name the file so, or give --format"
            )
        chosen = model_format(out, format_option)
        _client(ctx).jobs.get(job_id).download_model(out, format=chosen)  # type: ignore[arg-type]
    say(f"wrote {chosen} model of job {job_id} to {out}")


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str, output: Output = OutputFormat.table) -> None:
    """Cancel a job (a running one stops within one epoch)."""
    with reported_errors():
        info = _client(ctx).jobs.get(job_id).cancel().info
    print_rows([job_row(info)], JOB_COLUMNS, output, raw=info)


@jobs_app.command("delete")
def jobs_delete(ctx: typer.Context, job_id: str) -> None:
    """Delete a finished job with its metrics, evaluation and model."""
    with reported_errors():
        _client(ctx).jobs.get(job_id).delete()
    say(f"deleted job {job_id}")


# --- sweeps --------------------------------------------------------------------------------------

SWEEP_COLUMNS = ["id", "name", "dataset_id", "search", "total", "finished", "succeeded", "created_at"]


def sweep_row(info: dict[str, Any]) -> dict[str, Any]:
    progress = info.get("progress") or {}
    return {**info, **{k: progress.get(k) for k in ("total", "finished", "succeeded")}}


def print_report(report: dict[str, Any], output: OutputFormat, sweep_id: str | None = None) -> None:
    """The report's settings, best first; ``sweep_id`` (after ``sweeps submit --follow``) leads each row."""
    main = report["main_metric"]
    rows = []
    for setting in report["settings"]:
        summary = (setting.get("metrics") or {}).get(main) or {}
        ci = summary.get("ci") or [None, None]
        rows.append(
            {
                "sweep_id": sweep_id,
                "rank": setting.get("rank"),
                "setting": setting["setting"],
                "n": setting["n"],
                "mean": summary.get("mean"),
                "std": summary.get("std"),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "seed_cv": setting.get("seed_cv"),
            }
        )
    direction = "lower" if report.get("lower_is_better") else "higher"
    split = report.get("split") or "test"  # val for a tpe search: its settings are ranked on validation
    title = f"{split} {main} over seeds ({direction} is better; {report['succeeded']}/{report['total']} jobs succeeded)"
    columns = ["rank", "setting", "n", "mean", "std", "ci_low", "ci_high", "seed_cv"]
    print_rows(rows, ["sweep_id", *columns] if sweep_id else columns, output, title=title, raw=report)
    if output == OutputFormat.table and report.get("best"):
        say(str(report["best"]["explanation"]))


@sweeps_app.command("submit")
def sweeps_submit(
    ctx: typer.Context,
    sweep_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A sweep body (base, grid, seeds, …) in YAML or JSON.")
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait until every job has ended, then print the report.")
    ] = False,
    output: Output = OutputFormat.table,
) -> None:
    """Submit a sweep: one job per (setting, seed); prints the sweep. With --follow, once it has ended:
    json the whole sweep (its report under "report"), csv the report's rows led by the sweep's id, a
    table both; exit 1 if no job succeeded, 69 if the server stays unreachable."""
    with reported_errors(EXIT_UNAVAILABLE if follow else EXIT_FAILED):
        body = load_document(sweep_file)
        with quoting_hints(body):
            sweep = _client(ctx).sweeps.submit_body(body)
        if follow:
            say(f"submitted sweep {sweep.id} ({sweep.info['progress']['total']} jobs); waiting")
            info = sweep.wait(notify=say).info
            report = info["report"]
            if output == OutputFormat.json:
                print_json(info)
            else:
                if output == OutputFormat.table:
                    print_rows([sweep_row(info)], SWEEP_COLUMNS, output)
                print_report(report, output, sweep_id=sweep.id if output == OutputFormat.csv else None)
            if not report.get("succeeded"):
                say(Text("no job of the sweep succeeded", style="red"))
                raise typer.Exit(EXIT_FAILED)
            return
    print_rows([sweep_row(sweep.info)], SWEEP_COLUMNS, output, raw=sweep.info)


@sweeps_app.command("list")
def sweeps_list(ctx: typer.Context, output: Output = OutputFormat.table) -> None:
    """The project's sweeps, newest first."""
    with reported_errors():
        items = list(_client(ctx).sweeps.list())
    print_rows([sweep_row(i) for i in items], SWEEP_COLUMNS, output, raw=items)


@sweeps_app.command("show")
def sweeps_show(ctx: typer.Context, sweep_id: str, output: Output = OutputFormat.table) -> None:
    """A sweep's progress and its jobs."""
    with reported_errors():
        info = _client(ctx).sweeps.get(sweep_id).info
    if output == OutputFormat.table:
        print_rows([sweep_row(info)], SWEEP_COLUMNS, output)
    columns = ["id", "setting_key", "seed", "status", "main_metric"]
    print_rows(info["jobs"], columns, output, title="jobs", raw=info)


@sweeps_app.command("cancel")
def sweeps_cancel(ctx: typer.Context, sweep_id: str, output: Output = OutputFormat.table) -> None:
    """Cancel a sweep: its queued jobs at once, its running ones within one epoch; a search asks no more."""
    with reported_errors():
        answer = _client(ctx).sweeps.get(sweep_id).cancel()
    print_rows([answer], ["id", "cancelled", "cancel_requested"], output, raw=answer)


@sweeps_app.command("delete")
def sweeps_delete(ctx: typer.Context, sweep_id: str) -> None:
    """Delete a sweep whose jobs have all ended, with those jobs (cancel it first)."""
    with reported_errors():
        _client(ctx).sweeps.get(sweep_id).delete()
    say(f"deleted sweep {sweep_id}")


@sweeps_app.command("report")
def sweeps_report(ctx: typer.Context, sweep_id: str, output: Output = OutputFormat.table) -> None:
    """Per setting: the main metric's mean, std and 95% CI over seeds, best first (test metrics; for a tpe
    search validation metrics, as the report's split says)."""
    with reported_errors():
        report = _client(ctx).sweeps.get(sweep_id).report()
    print_report(report, output)


# --- spec, predict ---------------------------------------------------------------------------------


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the JobSpec JSON Schema (for editor completion of spec.yaml / spec.json)."""
    from worker.engine.spec import JobSpec

    print_json(JobSpec.model_json_schema())


def predict(
    model: Annotated[
        Path,
        typer.Option("--model", "-m", exists=True, dir_okay=False, help="A .pt, .onnx or .safetensors model file."),
    ],
    input_file: Annotated[
        Path, typer.Option("--input", "-i", exists=True, dir_okay=False, help=".csv, .csv.gz, .parquet or .npz")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write predictions here (.csv or .parquet); default (or -): CSV on stdout."),
    ] = None,
) -> None:
    """Offline prediction, no server: windows cut from INPUT the way the job's layout did, predictions out."""
    from worker.engine.offline import OUTPUT_SUFFIXES, predict_file, write_table

    with reported_errors():  # the engine's DataError is a ValueError: one line, exit 1
        if out is not None and str(out) == "-":
            out = None  # `-o -`: standard output, as without -o
        if out is not None and not out.name.lower().endswith(OUTPUT_SUFFIXES):
            raise ValueError(f"--out {out}: predictions are written as {' or '.join(OUTPUT_SUFFIXES)}")
        table = predict_file(model, input_file)
        if out is None:
            import pyarrow.csv as pcsv

            try:
                sink = sys.stdout.buffer
                pcsv.write_csv(table, sink)
                sink.flush()
            except BrokenPipeError:  # `| head`: the reader has what it wanted; nothing more to flush
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        write_table(table, out)
    say(f"wrote {table.num_rows} predictions to {out}")


def register(app: typer.Typer) -> None:
    """Mount the user commands on the ``rnnlab`` command."""
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(sweeps_app, name="sweeps")
    app.add_typer(spec_app, name="spec")
    app.command("predict")(predict)


def main() -> None:
    """``rnnlab-client``-style entry point without the server commands (used by tests)."""
    app = typer.Typer(help="rnnlab client commands.", no_args_is_help=True)
    register(app)
    run(app)


def run(app: typer.Typer) -> None:
    """Run the command line; a usage error exits ``EXIT_USAGE`` (see there).

    Click's errors are told apart by class name: typer ships its own copy of click in newer releases.
    """
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "Abort" in kinds:
            say("Aborted.")
            raise SystemExit(EXIT_FAILED) from None
        if "ClickException" not in kinds:
            raise
        exc.show()  # type: ignore[attr-defined]
        raise SystemExit(EXIT_USAGE if "UsageError" in kinds else exc.exit_code) from None  # type: ignore[attr-defined]
    raise SystemExit(code if isinstance(code, int) else 0)
