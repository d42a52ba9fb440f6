"""Job queries and commands. Routes call these; these call state transitions and the dispatcher."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, delete, select
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.loading import load_dataset_data
from app.datasets.service import get_dataset
from app.db import get_scoped
from app.errors import BadRequest, Conflict, InvalidInput, validation_details, validation_message
from app.jobs import state
from app.jobs.dispatch import nudge
from app.jobs.documents import DOCUMENT_COLUMNS, document_of, job_document
from app.jobs.final_values import EPOCH_SPLITS
from app.jobs.history import metric_series
from app.jobs.paging import fetch_jobs_page
from app.jobs.query import EPOCH_SPLIT_METRICS, apply_where, metric_value
from app.jobs.schemas import JobRead, Leaderboard, LeaderboardEntry
from app.jobs.status import ACTIVE, FINISHED, JobStatus
from app.models import Dataset, EpochMetric, Evaluation, Job, Project
from app.pagination import PageParams
from app.queue import DEFAULT_QUEUE, GPU_QUEUE
from app.quotas import check_active_jobs_quota
from app.storage import KeyNotFound, StorageUnavailable, get_storage
from worker.engine import DataError, JobSpec, check_spec_fits, results
from worker.engine.defaults import TrainingShape, resolve_defaults
from worker.engine.footprint import blamed_fields, describe, footprint
from worker.engine.metrics import lower_is_better

log = logging.getLogger(__name__)


def parse_spec(payload: Any, prefix: str = "") -> JobSpec:
    """Validate a raw spec; a 422 whose details name each bad field (``prefix`` for nested specs)."""
    try:
        return JobSpec.model_validate(payload, context={"submitted": True})
    except ValidationError as exc:
        details = validation_details(exc.errors())
        for d in details:
            d["field"] = f"{prefix}{d['field']}" if d["field"] else prefix.rstrip(".")
        raise InvalidInput("invalid_spec", validation_message(details), details) from exc


def _needed_columns(spec: JobSpec, dataset: Dataset) -> list[str] | None:
    if dataset.format == "npz" or spec.data.features is None:
        return None
    d = spec.data
    names = [d.target, *(d.features or []), d.sequence_column, d.order_column, d.group_column, d.split.column]
    if spec.text is not None:
        names.append(spec.text.column)
    known = {c["name"] for c in dataset.columns or []}
    wanted = [n for n in dict.fromkeys(names) if n]
    # Unknown names are reported by the engine's check with the list of columns; load all for that.
    return wanted if all(n in known for n in wanted) else None


def check_spec_against_dataset(spec: JobSpec, dataset: Dataset, data: Any | None = None) -> Any:
    """422 naming the field when the spec cannot run on this dataset. Returns the loaded data for reuse."""
    return resolve_spec_for_dataset(spec, dataset, data)[1]


def resolve_spec_for_dataset(spec: JobSpec, dataset: Dataset, data: Any | None = None) -> tuple[JobSpec, Any]:
    """The spec with its "auto" values resolved from the dataset (422 when it cannot run on it), and
    the loaded data for reuse."""
    shape, data = fit_spec_to_dataset(spec, dataset, data)
    return resolve_within_limits(spec, shape), data


def resolve_within_limits(spec: JobSpec, shape: TrainingShape) -> JobSpec:
    """``resolve_defaults``, then 422 ``model_too_large`` when training it would need more memory than
    ``RNNLAB_MAX_TRAINING_MEMORY_BYTES`` (every field had its bound, but hidden 4096 × 8 bidirectional
    LSTM layers is 3 billion parameters: a worker grew past 9 GB and could not be cancelled)."""
    resolved = resolve_defaults(spec, shape)
    cost = footprint(resolved, shape)
    limit = get_settings().max_training_memory_bytes
    if cost.training_bytes > limit:
        field, lower = blamed_fields(resolved, cost)
        message = (
            f"this model is too large to train here: {describe(cost)}, above the limit of "
            f"{limit / 1024**3:,.1f} GiB (RNNLAB_MAX_TRAINING_MEMORY_BYTES); lower {', '.join(lower[:-1])} "
            f"or {lower[-1]}"
        )
        detail = {"field": field, "message": message, "type": "too_large", "fields": lower}
        raise InvalidInput("model_too_large", message, [detail])
    return resolved


def fit_spec_to_dataset(spec: JobSpec, dataset: Dataset, data: Any | None = None) -> tuple[TrainingShape, Any]:
    """422 naming the field when the spec cannot run on this dataset; else the sizes its defaults
    depend on, and the loaded data for reuse."""
    if data is None:
        data = load_dataset_data(dataset, _needed_columns(spec, dataset))
    try:
        return check_spec_fits(spec, data), data
    except DataError as exc:
        raise InvalidInput(
            "spec_does_not_fit_dataset",
            str(exc),
            [{"field": exc.field, "message": str(exc), "type": "dataset_mismatch"}],
        ) from exc
    return data


def queue_for(spec: JobSpec) -> str:
    # GPU jobs wait for a GPU worker; 'auto' runs wherever a worker is free.
    return GPU_QUEUE if spec.device == "cuda" else DEFAULT_QUEUE


def new_job(
    project: Project,
    spec: JobSpec,
    *,
    sweep_id: str | None = None,
    setting: dict[str, Any] | None = None,
) -> Job:
    """A queued job row for a validated spec (not yet added to a session)."""
    return Job(
        project_id=project.id,
        dataset_id=spec.dataset_id,
        sweep_id=sweep_id,
        setting=setting,
        setting_key=json.dumps(setting, sort_keys=True) if setting is not None else None,
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec.normalized(),
        task=spec.task,
        cell=spec.model.cell,
        queue=queue_for(spec),
        progress_epochs=spec.training.epochs,
        max_attempts=get_settings().max_attempts,
    )


def dispatch(jobs: Sequence[Job]) -> None:
    """Jobs were committed: let the fair dispatcher send what fits (after the commit, so a worker
    always finds the row). Jobs it cannot send yet wait in SQL for a free place."""
    nudge(job.queue for job in jobs)


def create_job(session: Session, project: Project, payload: Any) -> Job:
    spec = parse_spec(payload)
    dataset = get_dataset(session, project.id, spec.dataset_id)
    spec, _ = resolve_spec_for_dataset(spec, dataset)
    check_active_jobs_quota(session, project.id, 1)
    job = new_job(project, spec)
    session.add(job)
    session.commit()
    dispatch([job])
    return job


def get_job(session: Session, project: Project, job_id: str) -> Job:
    return get_scoped(session, Job, project.id, job_id, "job")


def read_job(session: Session, project: Project, job_id: str) -> dict[str, Any]:
    """The job's status document (``JobRead``'s fields; see ``app.jobs.documents``)."""
    return job_document(session, project.id, job_id)


def list_jobs(
    session: Session,
    project: Project,
    page: PageParams,
    *,
    statuses: list[str] | None = None,
    dataset_id: str | None = None,
    task: str | None = None,
    cell: str | None = None,
    sweep_id: str | None = None,
    where: str | None = None,
    sort: str = "-created_at",
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the project's jobs as documents (see ``app.jobs.documents``), and the next cursor."""
    # The keyset walk reads the documents' columns itself: one query per page (two when the page
    # reaches the jobs missing the sort value).
    query: Select[Any] = select(*DOCUMENT_COLUMNS).where(Job.project_id == project.id)
    walk_index = False
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if dataset_id:
        query = query.where(Job.dataset_id == dataset_id)
    if task:
        query = query.where(Job.task == task)
    if cell:
        query = query.where(Job.cell == cell)
    if sweep_id:
        query = query.where(Job.sweep_id == sweep_id)
    if where:
        # PostgreSQL may range-scan a selective metric filter through the value index (it weighs that
        # with statistics); SQLite has none and would sort every match, so it gets only the key lookups.
        dialect = session.get_bind().dialect.name
        query, reads_spec = apply_where(query, where, project.id if dialect == "postgresql" else None)
        # PostgreSQL guesses that `model.hidden_size = 16` matches almost nothing and would scan
        # and sort; make it walk the sort index instead (SQLite walks it anyway).
        walk_index = reads_spec and dialect == "postgresql"
    try:
        rows, cursor = fetch_jobs_page(session, query, project.id, sort, page, walk_index=walk_index)
    except SQLDataError as exc:
        # PostgreSQL refusing to read a spec path holding text as a number (data.target > 5); any
        # other database error is not the filter's fault and stays a 500.
        session.rollback()
        if not where:
            raise
        raise BadRequest("invalid_where", f"the filter compares a field with a value of another type: {where}") from exc
    return [document_of(row) for row in rows], cursor


def cancel_job(session: Session, project: Project, job_id: str) -> Job:
    job = get_job(session, project, job_id)
    if job.status in FINISHED:
        raise Conflict("job_finished", f"job '{job_id}' already finished with status '{job.status}'")
    if state.request_cancel(session, job) == JobStatus.CANCELLED:
        dispatch([job])  # it may have been in flight: its place goes to the next job
    return job


def delete_jobs(session: Session, jobs: Sequence[Job], also: Sequence[Any] = ()) -> None:
    """Delete finished jobs with their metrics, evaluations (database cascade) and model files; ``also``
    (rows such as their sweep) are deleted in the same transaction."""
    active = [j.id for j in jobs if j.status in ACTIVE]
    if active:
        raise Conflict(
            "job_active",
            f"job(s) {', '.join(active[:5])} are still queued or running; cancel them first",
            {"jobs": active},
        )
    # The model of every attempt: one killed between its upload and its commit left its file behind.
    keys = list(dict.fromkeys(key for j in jobs for key in model_keys_of(j)))
    # Guarded by status: a job cannot have started since the check (finished jobs never restart).
    ids = [j.id for j in jobs]
    session.execute(delete(Job).where(Job.id.in_(ids), Job.status.in_(FINISHED)))
    for row in also:
        session.delete(row)
    session.commit()
    storage = get_storage()
    for key in keys:
        try:
            storage.delete(key)  # a key with no object is fine
        except StorageUnavailable as exc:  # the jobs are gone; an unreferenced model file stays behind
            log.warning("model %s could not be removed from storage: %s", key, exc.message)


def model_keys_of(job: Job) -> list[str]:
    """The storage keys a job's attempts may have written a model to (``models/{id}-{n}.pt``)."""
    keys = [f"models/{job.id}-{n}.pt" for n in range(1, (job.attempts or 0) + 1)]
    return [job.artifact_key, *keys] if job.artifact_key else keys


def delete_job(session: Session, project: Project, job_id: str) -> None:
    job = get_job(session, project, job_id)
    if job.sweep_id is not None:
        raise Conflict(
            "job_in_sweep",
            f"job '{job_id}' belongs to sweep '{job.sweep_id}'; delete the sweep instead",
            {"sweep_id": job.sweep_id},
        )
    delete_jobs(session, [job])


def event_snapshot(
    session: Session, job_id: str, after_epoch: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """For the event stream: the job's status fields (None once it is deleted) and its epochs after
    ``after_epoch``, each as ``{"epoch", "metrics": {split: {name: value}}}``."""
    job = session.get(Job, job_id)
    if job is None:
        return None, []
    status = JobRead.from_row(job).model_dump(
        mode="json", include={"id", "status", "progress", "attempts", "started_at", "error", "waiting_for"}
    )
    rows = session.execute(
        select(EpochMetric.epoch, EpochMetric.split, EpochMetric.name, EpochMetric.value)
        .where(EpochMetric.job_id == job_id, EpochMetric.epoch > after_epoch)
        .order_by(EpochMetric.epoch)
    )
    epochs: dict[int, dict[str, dict[str, float | None]]] = {}
    for epoch, split, name, value in rows:
        epochs.setdefault(epoch, {}).setdefault(split, {})[name] = value
    return status, [{"epoch": e, "metrics": m} for e, m in sorted(epochs.items())]


def job_metrics(session: Session, project: Project, job_id: str) -> list[dict[str, Any]]:
    get_job(session, project, job_id)
    return metric_series(session, [job_id])[job_id]


def _require_succeeded(job: Job, what: str) -> None:
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(
            f"{what}_not_ready",
            f"job '{job.id}' is {job.status}; its {what} exists once it has succeeded",
            {"status": job.status},
        )


def job_evaluation(session: Session, project: Project, job_id: str) -> results.Evaluation:
    job = get_job(session, project, job_id)
    _require_succeeded(job, "evaluation")
    row = session.get(Evaluation, job_id)
    if row is None:
        raise Conflict("evaluation_not_ready", f"job '{job_id}' has no evaluation")
    return results.Evaluation.model_validate(row.body)


def model_key(session: Session, project: Project, job_id: str) -> str:
    """The storage key of a succeeded job's model (409 ``model_not_ready`` before it has one)."""
    job = get_job(session, project, job_id)
    _require_succeeded(job, "model")
    if not job.artifact_key:
        raise Conflict("model_not_ready", f"job '{job_id}' has no stored model")
    return job.artifact_key


def model_path(session: Session, project: Project, job_id: str) -> Path:
    """A local copy of the job's model (for an object store: from this machine's blob cache)."""
    key = model_key(session, project, job_id)
    try:
        return get_storage().local_path(key)
    except KeyNotFound as exc:
        raise Conflict("model_not_ready", f"job '{job_id}' has no stored model") from exc


def load_model_artifact(key: str) -> Any:
    """The stored ``.pt`` under ``key``, loaded (weights only). A cached copy that fails to load is
    fetched once more (see Storage.read_local); KeyNotFound when there is none."""
    import torch

    return get_storage().read_local(key, lambda path: torch.load(path, map_location="cpu", weights_only=True))


@lru_cache(maxsize=16)
def _predictor(storage_url: str, key: str) -> Any:
    """Keyed on the storage key: a model's key names immutable content (job and attempt), and the
    blob cache's LRU clock (the copy's mtime) moves on every use."""
    from worker.engine import load_predictor

    return load_predictor(load_model_artifact(key))


def _invalid_inputs(message: str) -> InvalidInput:
    return InvalidInput("invalid_inputs", message, [{"field": "inputs", "message": message, "type": "invalid_inputs"}])


def _all_plain_numbers(value: Any) -> bool:
    """Nested lists whose leaves are all ints or floats (no bool, no string)."""
    if isinstance(value, list):
        return all(_all_plain_numbers(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def predict(session: Session, project: Project, job_id: str, inputs: list[Any]) -> Any:
    import numpy as np

    key = model_key(session, project, job_id)
    try:
        predictor = _predictor(get_storage().url, key)
    except KeyNotFound as exc:
        raise Conflict("model_not_ready", f"job '{job_id}' has no stored model") from exc
    if getattr(predictor, "codec", None) is not None:  # a text model: raw strings in, tokenized as in training
        try:
            return predictor.predict(inputs)
        except DataError as exc:
            raise _invalid_inputs(str(exc)) from exc
    try:
        # Read as JSON gave it first: strings ("0.1") and booleans are not numbers here.
        array = np.asarray(inputs)
        if array.dtype.kind == "O" and _all_plain_numbers(inputs):
            array = np.asarray(inputs, dtype=np.float64)  # integers beyond int64 (10**30) are numbers too
        if array.dtype.kind not in "iuf":
            raise TypeError(f"elements of kind {array.dtype.kind!r}")
        array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid_inputs(
            "inputs must be a rectangular array of numbers (not strings or booleans) shaped [N, T, F] or [N, T]"
        ) from exc
    if array.ndim not in (2, 3) or array.shape[0] == 0:
        raise _invalid_inputs(f"inputs must be shaped [N, T, F] or [N, T]; got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise _invalid_inputs("inputs contain NaN or infinite values")
    try:
        return predictor.predict(array)
    except DataError as exc:
        raise _invalid_inputs(str(exc)) from exc


def compare_metrics(
    session: Session, project: Project, job_ids: list[str], names: list[str] | None, max_points: int
) -> list[dict[str, Any]]:
    if len(job_ids) > 50:
        raise BadRequest("too_many_jobs", f"compare at most 50 jobs at once (got {len(job_ids)})")
    for index, name in enumerate(names or []):
        split, _, metric = name.partition(".")
        if metric not in EPOCH_SPLIT_METRICS.get(split, ()):  # train.rmse never has a value: train reports loss
            shown = name if len(name) <= 40 else name[:40] + "…"
            message = f"name {shown!r} is not a per-epoch metric; one of: " + ", ".join(
                f"{s}.{m}" for s in EPOCH_SPLITS for m in EPOCH_SPLIT_METRICS[s]
            )
            raise InvalidInput("invalid_metric", message, [{"field": f"name[{index}]", "message": message}])
    jobs = [get_job(session, project, job_id) for job_id in dict.fromkeys(job_ids)]
    series = metric_series(session, [j.id for j in jobs], names, max_points)
    return [{"job_id": j.id, "name": j.name, "status": j.status, "series": series[j.id]} for j in jobs]


# --- leaderboard ---------------------------------------------------------------------------------


def leaderboard(session: Session, project: Project, dataset_id: str, metric: str, limit: int) -> Leaderboard:
    """The best succeeded jobs on one of the project's datasets, by a final metric in its natural order."""
    dataset = get_dataset(session, project.id, dataset_id)
    column = metric_value(metric, code="invalid_metric", error=InvalidInput)
    if column is None:
        raise InvalidInput(
            "invalid_metric",
            f"metric must be split.name like test.rmse or val.accuracy; got {metric!r}",
            [{"field": "metric", "message": "expected split.name", "type": "invalid_metric"}],
        )
    split, _, name = metric.partition(".")
    lower = lower_is_better(name)
    value = column.label("value")
    rows = session.execute(
        select(Job, value)
        .where(Job.project_id == project.id, Job.dataset_id == dataset.id, Job.status == JobStatus.SUCCEEDED)
        .where(column.is_not(None))
        .order_by(value.asc() if lower else value.desc(), Job.finished_at, Job.id)
        .limit(limit)
    ).all()
    ids = [job.id for job, _ in rows]
    evaluations = {
        job_id: results.Evaluation.model_validate(body)
        for job_id, body in session.execute(
            select(Evaluation.job_id, Evaluation.body).where(Evaluation.job_id.in_(ids))
        ).all()
    }
    items = []
    for rank, (job, metric_value_) in enumerate(rows, start=1):
        evaluation = evaluations.get(job.id)
        interval = evaluation.interval(name) if evaluation is not None and split == "test" else None
        items.append(
            LeaderboardEntry(
                rank=rank,
                job_id=job.id,
                name=job.name,
                cell=job.cell,
                sweep_id=job.sweep_id,
                setting=job.setting,
                seed=job.spec.get("training", {}).get("seed"),
                metric=metric,
                value=float(metric_value_),
                interval=interval,
                comparison=evaluation.comparison if evaluation is not None else None,
                finished_at=job.finished_at,
            )
        )
    return Leaderboard(dataset_id=dataset.id, metric=metric, lower_is_better=lower, items=items)
