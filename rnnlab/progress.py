"""A live rich progress bar for a job: one step per epoch, with the latest loss and validation metric."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

if TYPE_CHECKING:
    from rnnlab.client import Job


def epoch_line(metrics: dict[str, dict[str, float | None]]) -> str:
    """``loss 0.1234  val rmse 0.5678``: the training loss and the validation metrics but the loss first."""
    parts = []
    train_loss = metrics.get("train", {}).get("loss")
    if train_loss is not None:
        parts.append(f"loss {train_loss:.4g}")
    val = metrics.get("val", {})
    for name, value in sorted(val.items(), key=lambda item: item[0] == "loss"):
        if value is not None:
            parts.append(f"val {name} {value:.4g}")
            break
    return "  ".join(parts)


def final_line(job: Job) -> Text:
    """``job ID succeeded`` (or ``failed: Type: message``), styled, the server's text taken verbatim."""
    status = job.status
    style = {"succeeded": "green", "failed": "red"}.get(status, "yellow")
    message = Text.assemble(f"job {job.id} ", (status, style))
    error = job.info.get("error")
    if error:
        message.append(f": {error.get('type')}: {error.get('message')}")
    return message


def follow_with_progress(
    job: Job,
    console: Console | None = None,
    timeout: float | None = None,
    *,
    reconnect_seconds: float | None = None,
    notify: Callable[[str], None] | None = None,
) -> None:
    """Follow ``job`` until it has finished, drawing the bar on ``console`` (stderr by default);
    ``TimeoutError`` if it is still running after ``timeout`` seconds. While the server cannot be
    reached the follow reconnects (see ``Job.follow``) and says so above the bar (or to ``notify``)."""
    from rnnlab.client import RECONNECT_SECONDS
    from rnnlab.output import progress_console

    console = console or progress_console()
    epochs = int((job.info.get("progress") or {}).get("epochs") or 0) or None
    # markup=False: ids, statuses and metric names are the server's text, not rich markup
    columns: list[Any] = [
        TextColumn("{task.fields[job]}", style="bold", markup=False),
        TextColumn("{task.fields[status]}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[line]}", markup=False),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=epochs, job=job.id, status=job.status, line="")

        def notice(message: str) -> None:
            progress.console.print(Text(message, style="yellow"), soft_wrap=True)

        window = RECONNECT_SECONDS if reconnect_seconds is None else reconnect_seconds
        for event in job.follow(timeout, reconnect_seconds=window, notify=notify or notice):
            if event.event == "status":
                total = (event.data.get("progress") or {}).get("epochs") or epochs
                done = (event.data.get("progress") or {}).get("epoch", 0)
                progress.update(task, total=total, completed=done, status=event.data.get("status", ""))
            elif event.event == "epoch":
                progress.update(task, completed=int(event.data["epoch"]), line=epoch_line(event.data["metrics"]))
            elif event.event == "end":
                progress.update(task, status=event.data.get("status", ""))
    console.print(final_line(job), soft_wrap=True)
