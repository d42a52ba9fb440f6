"""Routes of /api/v1/jobs: validate, call one service function, return a schema."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from app.auth import CurrentProject
from app.db import SessionDep, new_session
from app.errors import not_found
from app.jobs import model_export, service
from app.jobs.export import metrics_csv
from app.jobs.model_export import ModelFormat
from app.jobs.schemas import ComparedMetrics, JobMetrics, JobRead, Leaderboard, PredictRequest, PredictResponse
from app.jobs.status import FINISHED, JobStatus
from app.jobs.watch import JobWatcher, get_watcher
from app.pagination import Page, PageParams, page_params
from app.ratelimit import (
    STREAM_REFRESH_SECONDS,
    acquire_event_stream,
    client_key,
    refresh_event_stream,
    release_event_stream,
    streams_in_redis,
)
from app.responses import OrjsonResponse
from app.routing import PolledRead
from worker.engine.results import Evaluation
from worker.engine.spec import Task

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobRead)
def create_job(
    project: CurrentProject,
    session: SessionDep,
    payload: Annotated[dict[str, Any], Body(description="A JobSpec (schema `JobSpec` below).")],
) -> JobRead:
    """Validate the spec against its dataset, store the job (queued), then enqueue it."""
    return JobRead.from_row(service.create_job(session, project, payload))


@router.get("", response_model=Page[JobRead])
def list_jobs(
    project: CurrentProject,
    session: SessionDep,
    page: Annotated[PageParams, Depends(page_params)],
    status: Annotated[list[JobStatus] | None, Query(description="Repeatable.")] = None,
    dataset_id: str | None = None,
    task: Task | None = None,  # the spec's own list of tasks, so a new task is filterable at once
    cell: Literal["rnn", "lstm", "gru"] | None = None,  # as ModelSpec.cell (a test checks they agree)
    sweep_id: str | None = None,
    where: Annotated[
        str | None,
        Query(description='e.g. test.rmse < 0.5 and model.cell in ("lstm","gru"), or best.val.loss < 0.1'),
    ] = None,
    sort: Annotated[
        str,
        Query(
            description="created_at, finished_at, name, status, attempts, a final metric (test.rmse) or an epoch "
            "value (best.val.loss, last.train.loss); - for descending. Jobs missing the value come last."
        ),
    ] = "-created_at",
) -> OrjsonResponse:
    jobs, cursor = service.list_jobs(
        session,
        project,
        page,
        statuses=list(status or []),
        dataset_id=dataset_id,
        task=task,
        cell=cell,
        sweep_id=sweep_id,
        where=where,
        sort=sort,
    )
    return OrjsonResponse({"items": jobs, "next_cursor": cursor})


def get_job(job_id: str, project: CurrentProject, session: SessionDep) -> OrjsonResponse:
    """The job: status, progress, resolved spec and, once finished, its summary. Poll it while the job
    runs, or stream `GET /jobs/{job_id}/events`."""
    # Polled, so a PolledRead route (app/routing.py): its dependencies are called directly.
    return OrjsonResponse(service.read_job(session, project, job_id))


router.add_api_route("/{job_id}", get_job, methods=["GET"], response_model=JobRead, route_class_override=PolledRead)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, project: CurrentProject, session: SessionDep) -> Response:
    """Delete a finished job, its metrics, evaluation and model (409 while queued or running)."""
    service.delete_job(session, project, job_id)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead)
def cancel_job(job_id: str, project: CurrentProject, session: SessionDep) -> JobRead:
    """A queued job is cancelled at once; a running one stops within one epoch."""
    return JobRead.from_row(service.cancel_job(session, project, job_id))


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    response_class=OrjsonResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"}},
)
def job_metrics(
    job_id: str,
    project: CurrentProject,
    session: SessionDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="csv: one row per epoch, one column per split.metric")
    ] = "json",
) -> Response:
    series = service.job_metrics(session, project, job_id)
    if format == "csv":
        headers = {"Content-Disposition": f'attachment; filename="rnnlab-{job_id}-metrics.csv"'}
        return Response(metrics_csv(series), media_type="text/csv; charset=utf-8", headers=headers)
    return OrjsonResponse({"job_id": job_id, "series": series})


@router.get("/{job_id}/evaluation", response_model=Evaluation)
def job_evaluation(job_id: str, project: CurrentProject, session: SessionDep) -> Evaluation:
    """Metrics per split with 95% bootstrap intervals, baselines on the same test examples, the
    generalization gap, the confusion matrix (classification) and attribution."""
    return service.job_evaluation(session, project, job_id)


_MODEL_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The model file (format pt or safetensors: application/octet-stream; onnx: application/onnx).",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/onnx": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    307: {"description": "On object storage: a presigned URL of the stored file (no Authorization needed)."},
}


@router.get("/{job_id}/model", response_class=FileResponse, responses=_MODEL_RESPONSE)
def job_model(
    job_id: str,
    request: Request,
    project: CurrentProject,
    session: SessionDep,
    format: Annotated[ModelFormat, Query(description="pt, onnx (scalers folded in) or safetensors.")] = "pt",
) -> Response:
    """The trained model with its normalized spec and scalers.

    ``pt``: torch.save of {state_dict, spec, scalers, …}, load with weights_only=True. ``onnx``: raw
    inputs [batch, steps, features] to predictions in original units (or class probabilities); the
    spec, scalers, classes and opset are in the model's metadata (``rnnlab.*``). ``safetensors``:
    the weights, with the same facts as JSON metadata; no pickle.
    """
    model = model_export.exported_model(session, project, job_id, format)
    filename = f"rnnlab-{job_id}.{format}"
    if isinstance(model, Path):
        try:
            stat = os.stat(model)
        except FileNotFoundError as exc:  # the job was deleted since the lookup
            raise not_found("job", job_id) from exc
        response = FileResponse(model, media_type=model_export.MEDIA_TYPES[format], filename=filename, stat_result=stat)
        # A client that has this file already (its ETag) gets a 304 instead of the bytes again.
        # (compared weakly, as RFC 9110 asks: a proxy may have marked the tag W/)
        asked = {tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")}
        if response.headers["etag"] in asked or "*" in asked:
            return Response(status_code=304, headers={"etag": response.headers["etag"]})
        return response
    if isinstance(model, model_export.ModelRedirect):
        return RedirectResponse(model.url, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if isinstance(model, model_export.StoredModel):
        headers["Content-Length"] = str(model.size)
        return StreamingResponse(model.chunks, media_type=model_export.MEDIA_TYPES[format], headers=headers)
    return Response(model, media_type=model_export.MEDIA_TYPES[format], headers=headers)


@router.post("/{job_id}/predict", response_model=PredictResponse)
def job_predict(job_id: str, body: PredictRequest, project: CurrentProject, session: SessionDep) -> PredictResponse:
    return PredictResponse(job_id=job_id, predictions=service.predict(session, project, job_id, body.inputs))


KEEP_ALIVE_SECONDS = 15.0


def _check_job(project: Any, job_id: str) -> None:
    with new_session() as session:
        service.get_job(session, project, job_id)


def _snapshot(job_id: str, after_epoch: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    with new_session() as session:
        return service.event_snapshot(session, job_id, after_epoch)


def _sse(event: str, data: Any, event_id: str) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def _run_token(status: dict[str, Any]) -> str:
    """Names one run of a job (a retried or handed-back job starts its epochs again): its attempt and
    when it was claimed, hashed short. Part of every event's id."""
    run = f"{status['attempts']}|{status['started_at']}"
    return hashlib.blake2s(run.encode(), digest_size=4).hexdigest()


def _resume_from(last_event_id: str | None) -> tuple[int, str | None]:
    """``Last-Event-ID`` (``EPOCH.RUN``, as this stream sends it) → the last epoch the client has and
    the run it belongs to; anything else → start from the beginning."""
    epoch, _, run = (last_event_id or "").strip().partition(".")
    if not epoch.isdecimal() or not run or len(epoch) > 9:
        return 0, None
    return int(epoch), run


_EVENTS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "A text/event-stream: `status`, `epoch` and `end` events, each `data:` a JSON object and an "
            "`id:` (`EPOCH.RUN`). A client reconnecting with `Last-Event-ID` gets only the epochs after it."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=_EVENTS_RESPONSE)
async def job_events(job_id: str, request: Request, project: CurrentProject, session: SessionDep) -> StreamingResponse:
    """Server-Sent Events: ``status`` on every change, ``epoch`` per finished epoch, ``end`` when done.

    Every event has an ``id`` (``EPOCH.RUN``: the last epoch sent and the job's run); reconnecting with
    the ``Last-Event-ID`` header (browsers' EventSource does so by itself) resumes after that epoch:
    only the epochs the client has not seen, then the current ``status``. An id of an earlier run
    (the job was retried or handed back since) or one that cannot be read starts from epoch 1.

    Each key may hold RNNLAB_MAX_EVENT_STREAMS_PER_KEY streams open at once (429 beyond).
    """
    # Give back the connection the key lookup may hold (the stream outlives the request's session),
    # then check the job off the event loop in a short session of its own: with many streams
    # opening at once, holding one connection while waiting for another would starve the pool.
    session.close()
    await run_in_threadpool(_check_job, project, job_id)
    who = client_key(request)
    # Counted in Redis (a network call: off the event loop) or in this process's memory.
    token = await run_in_threadpool(acquire_event_stream, who) if streams_in_redis() else acquire_event_stream(who)

    async def stream() -> AsyncIterator[str]:
        refreshed = time.monotonic()
        try:
            async for event in events(job_id, request, request.headers.get("last-event-id")):
                yield event
                if time.monotonic() - refreshed > STREAM_REFRESH_SECONDS:  # idle streams yield keep-alives
                    refreshed = time.monotonic()
                    await run_in_threadpool(refresh_event_stream, who, token)
        finally:
            if streams_in_redis():
                await run_in_threadpool(release_event_stream, who, token)
            else:
                release_event_stream(who, token)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def events(job_id: str, request: Request, last_event_id: str | None = None) -> AsyncIterator[str]:
    """The event stream of one job. It reads SQL only when the process's shared watcher
    (app.jobs.watch) saw the job change."""
    watcher = get_watcher()
    watcher.watch(job_id)
    try:
        async for event in _job_events(watcher, job_id, request, last_event_id):
            yield event
    finally:
        watcher.unwatch(job_id)


async def _job_events(
    watcher: JobWatcher, job_id: str, request: Request, last_event_id: str | None
) -> AsyncIterator[str]:
    last_status: dict[str, Any] | None = None
    last_epoch, resumed_run = _resume_from(last_event_id)
    run: str | None = None
    while True:
        seen = watcher.version(job_id)  # before reading: a change after this read wakes us again
        status, epochs = await run_in_threadpool(_snapshot, job_id, last_epoch)
        if status is None:
            yield _sse("end", {"status": "deleted"}, f"{last_epoch}.{run or resumed_run or '-'}")
            return
        if _run_token(status) != run:
            # A retried or handed-back job restarts its epochs from 1; every claim sets started_at.
            # A client resuming the run it saw keeps its epochs; any other run starts from 0.
            run = _run_token(status)
            last_epoch = last_epoch if run == resumed_run else 0
            resumed_run = None
            status, epochs = await run_in_threadpool(_snapshot, job_id, last_epoch)
            if status is None:
                continue
        for item in epochs:
            last_epoch = max(last_epoch, item["epoch"])
            yield _sse("epoch", item, f"{last_epoch}.{run}")
        if status != last_status:
            yield _sse("status", status, f"{last_epoch}.{run}")
            last_status = status
        if status["status"] in FINISHED:
            yield _sse("end", {"status": status["status"]}, f"{last_epoch}.{run}")
            return
        # Idle streams wake only for a keep-alive: the server cancels a stream whose client left
        # (Starlette listens for the disconnect), or the keep-alive write finds it gone.
        while await watcher.wait(job_id, seen, KEEP_ALIVE_SECONDS) == seen:
            if await request.is_disconnected():
                return
            yield ": keep-alive\n\n"


metrics_router = APIRouter(prefix="/metrics", tags=["dashboards"])


@metrics_router.get("", response_model=ComparedMetrics, response_class=OrjsonResponse)
def compare_metrics(
    project: CurrentProject,
    session: SessionDep,
    job_id: Annotated[list[str], Query(description="Repeatable: the jobs to compare (max 50).")],
    name: Annotated[list[str] | None, Query(description="Repeatable split.metric, e.g. val.loss.")] = None,
    max_points: Annotated[int, Query(ge=2, le=10000)] = 500,
) -> OrjsonResponse:
    """Several jobs' per-epoch histories at once, each series downsampled to at most max_points."""
    return OrjsonResponse({"jobs": service.compare_metrics(session, project, job_id, name, max_points)})


leaderboard_router = APIRouter(prefix="/datasets", tags=["leaderboard"])


@leaderboard_router.get("/{dataset_id}/leaderboard", response_model=Leaderboard)
def dataset_leaderboard(
    dataset_id: str,
    project: CurrentProject,
    session: SessionDep,
    metric: Annotated[str, Query(description="A final metric, split.name: test.rmse, test.accuracy, …")] = "test.rmse",
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
) -> Leaderboard:
    """Sorted in the metric's natural direction (errors and losses ascending, scores descending)."""
    return service.leaderboard(session, project, dataset_id, metric, limit)
