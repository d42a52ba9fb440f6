"""Sweep commands and queries. Routes call these; jobs are created through app.jobs.service."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.loading import load_dataset_data
from app.datasets.service import get_dataset
from app.db import get_scoped
from app.errors import AppError, Conflict, InvalidInput, validation_message
from app.jobs import state
from app.jobs.service import delete_jobs, dispatch, fit_spec_to_dataset, new_job, parse_spec, resolve_within_limits
from app.jobs.status import ACTIVE, FINISHED, JobStatus
from app.models import Job, Project, Sweep, new_id
from app.pagination import PageParams, fetch_page
from app.quotas import check_active_jobs_quota
from app.sweeps import grid as grids
from app.sweeps import search, tpe
from app.sweeps.report import build_report
from app.sweeps.rows import read_sweep_rows
from app.sweeps.schemas import (
    SweepCancel,
    SweepCreate,
    SweepJob,
    SweepProgress,
    SweepRead,
    SweepSummary,
)
from worker.engine.defaults import TrainingShape
from worker.engine.metrics import main_metric
from worker.engine.spec import JobSpec

# Job.setting_key holds the setting as JSON in a String(500) column.
SETTING_KEY_MAX_CHARS = 500

# --- creating ------------------------------------------------------------------------------------


def _planned_settings(body: SweepCreate) -> list[dict[str, int]]:
    """The settings to run, refused (422) when settings × seeds exceeds max_jobs or the server's bound."""
    size = grids.grid_size(body.grid)
    settings_count = size if body.search == "grid" else min(body.max_jobs, size)
    jobs_count = settings_count * len(body.seeds)
    server_max = get_settings().max_sweep_jobs
    how_many = f"this sweep would create {jobs_count} jobs ({settings_count} settings × {len(body.seeds)} seeds)"
    if body.search == "grid" and jobs_count > body.max_jobs:
        raise InvalidInput(
            "too_many_jobs",
            f"{how_many}, more than max_jobs={body.max_jobs}; raise max_jobs, shrink the grid or use search 'random'",
            {
                "jobs": jobs_count,
                "settings": settings_count,
                "seeds": len(body.seeds),
                "max_jobs": body.max_jobs,
            },
        )
    if jobs_count > server_max:
        raise InvalidInput(
            "too_many_jobs",
            f"{how_many}, more than this server allows per sweep ({server_max}, RNNLAB_MAX_SWEEP_JOBS)",
            {"jobs": jobs_count, "settings": settings_count, "seeds": len(body.seeds), "limit": server_max},
        )
    return grids.enumerate_settings(body.grid, body.search, body.max_jobs, body.random_seed)


def _parse_setting_spec(raw: dict[str, Any], indices: dict[str, int], setting: dict[str, Any]) -> JobSpec:
    """parse_spec, with each error's field renamed to the grid value (or base field) that caused it."""
    try:
        return parse_spec(raw)
    except AppError as exc:
        details = [{**d, "field": grids.blame_field(d["field"], indices)} for d in (exc.details or [])]
        for d in details:
            d["setting"] = setting
        raise InvalidInput(exc.code, validation_message(details), details) from exc


def _check_setting_fits(
    spec: JobSpec, dataset: Any, data: Any, indices: dict[str, int], setting: dict[str, Any]
) -> tuple[TrainingShape, Any]:
    try:
        return fit_spec_to_dataset(spec, dataset, data)
    except AppError as exc:
        details = [
            {**d, "field": grids.blame_field(d.get("field") or "", indices), "setting": setting}
            for d in (exc.details or [])
        ]
        fields = ", ".join(d["field"] for d in details)
        raise exc.with_message(f"{fields}: {exc.message}", details) from exc


def _resolve_setting(spec: JobSpec, shape: TrainingShape, indices: dict[str, int], setting: dict[str, Any]) -> JobSpec:
    """The setting's spec resolved from the data, within the server's limits (a too large model is
    blamed on the grid value that made it: ``grid.model.hidden_size[2]``)."""
    try:
        return resolve_within_limits(spec, shape)
    except AppError as exc:
        details = [
            {**d, "field": grids.blame_field(grids.cost_field(d, setting), indices), "setting": setting}
            for d in (exc.details or [])
        ]
        fields = ", ".join(d["field"] for d in details)
        raise exc.with_message(f"{fields}: {exc.message}", details) from exc


def create_sweep(session: Session, project: Project, body: SweepCreate) -> Sweep:
    """Validate every (setting, seed) spec against the dataset, then store the sweep and all its jobs
    in one commit, then enqueue them. One bad value → 422 naming it, and nothing is stored.

    A tpe search stores its space instead and asks its trials as slots free up (``app.sweeps.tpe``)."""
    if body.search == search.SEARCH:
        return tpe.create_tpe_sweep(session, project, body)
    for name in ("space", "objective", "pruner", "confirm_seeds", "startup_trials"):
        if getattr(body, name) is not None:
            raise grids.grid_error(f"'{name}' belongs to a tpe search; this sweep's search is '{body.search}'", name)
    if "parallelism" in body.model_fields_set:  # it has a default, so only a value the user sent is refused
        raise grids.grid_error(
            f"'parallelism' belongs to a tpe search; a {body.search} sweep queues all its jobs at once "
            "(the workers' concurrency decides how many run)",
            "parallelism",
        )
    grids.check_grid(body.grid)
    plan = _planned_settings(body)
    sweep_id = new_id()
    dataset = None
    data: Any = None
    jobs: list[Job] = []
    seen: dict[str, dict[str, Any]] = {}
    for indices in plan:
        setting = {path: body.grid[path][i] for path, i in indices.items()}
        if len(json.dumps(setting, sort_keys=True)) > SETTING_KEY_MAX_CHARS:
            raise grids.grid_error(
                f"setting {json.dumps(setting, sort_keys=True)[:80]}… is longer than {SETTING_KEY_MAX_CHARS} "
                "characters as JSON; sweep fewer or shorter values",
                "grid",
            )
        specs = []
        for seed in body.seeds:
            raw = grids.build_spec(body.base, setting, seed)
            if raw.get("name") is None and body.name:
                raw["name"] = body.name
            specs.append(_parse_setting_spec(raw, indices, setting))
        # Values that differ as JSON but not as a spec (1 and 1.0) would run the same setting twice
        # and count it twice in the ranking.
        normalized = json.dumps(specs[0].normalized(), sort_keys=True)
        if normalized in seen:
            raise grids.grid_error(
                f"settings {json.dumps(seen[normalized], sort_keys=True)} and {json.dumps(setting, sort_keys=True)} "
                "give the same job spec; remove the repeated value",
                "grid",
            )
        seen[normalized] = setting
        if dataset is None:
            dataset = get_dataset(session, project.id, specs[0].dataset_id)
            if any(path == "data" or path.startswith("data.") for path in body.grid):
                # Swept data fields may need other columns than the first setting: load them all once.
                data = load_dataset_data(dataset, None)
        # The seed changes neither the windows nor the split sizes: one fit check per setting.
        shape, data = _check_setting_fits(specs[0], dataset, data, indices, setting)
        # Resolved per setting, so the stored specs show the batch size and epochs each one ran.
        specs = [_resolve_setting(spec, shape, indices, setting) for spec in specs]
        jobs += [new_job(project, spec, sweep_id=sweep_id, setting=setting) for spec in specs]
    assert dataset is not None  # the plan has at least one setting
    check_active_jobs_quota(session, project.id, len(jobs))
    sweep = Sweep(
        id=sweep_id,
        project_id=project.id,
        dataset_id=dataset.id,
        name=body.name,
        base_spec=body.base,  # as sent: the jobs hold the normalized specs
        grid=body.grid,
        seeds=body.seeds,
        search=body.search,
        max_jobs=body.max_jobs,
    )
    session.add(sweep)
    session.flush()  # the sweep row first: jobs reference it
    session.add_all(jobs)
    session.commit()
    dispatch(jobs)
    return sweep


# --- reading -------------------------------------------------------------------------------------


def get_sweep(session: Session, project: Project, sweep_id: str) -> Sweep:
    return get_scoped(session, Sweep, project.id, sweep_id, "sweep")


def progress_by_sweep(session: Session, sweep_ids: list[str]) -> dict[str, SweepProgress]:
    """Job counts by status for each sweep, in one grouped query."""
    counts: dict[str, dict[str, int]] = {sid: {} for sid in sweep_ids}
    if sweep_ids:
        rows = session.execute(
            select(Job.sweep_id, Job.status, func.count())
            .where(Job.sweep_id.in_(sweep_ids))
            .group_by(Job.sweep_id, Job.status)
        )
        for sweep_id, status, count in rows:
            counts[str(sweep_id)][status] = int(count)
    return {sid: _progress(c) for sid, c in counts.items()}


def _progress(counts: dict[str, int]) -> SweepProgress:
    by_status = {str(s): counts.get(s, 0) for s in JobStatus}
    return SweepProgress(
        **by_status,
        total=sum(by_status.values()),
        finished=sum(by_status[s] for s in FINISHED),
    )


def _summary(sweep: Sweep, progress: SweepProgress) -> SweepSummary:
    return SweepSummary(
        id=sweep.id,
        name=sweep.name,
        dataset_id=sweep.dataset_id,
        base=sweep.base_spec,
        grid=sweep.grid,
        seeds=sweep.seeds,
        search=sweep.search,
        max_jobs=sweep.max_jobs,
        space=sweep.space,
        parallelism=sweep.parallelism,
        objective=sweep.objective,
        pruner=sweep.pruner,
        confirm_seeds=sweep.confirm_seeds,
        created_at=sweep.created_at,
        progress=progress,
    )


def list_sweeps(session: Session, project: Project, page: PageParams) -> tuple[list[SweepSummary], str | None]:
    query: Select[Any] = select(Sweep).where(Sweep.project_id == project.id)
    sweeps, cursor = fetch_page(session, query, page, Sweep.created_at, Sweep.id)
    progress = progress_by_sweep(session, [s.id for s in sweeps])
    return [_summary(s, progress[s.id]) for s in sweeps], cursor


def read_sweep(session: Session, project: Project, sweep_id: str) -> SweepRead:
    """The sweep, its jobs and the report over the jobs that have succeeded so far."""
    sweep = get_sweep(session, project, sweep_id)
    if sweep.search == search.SEARCH:
        jobs, report = tpe.read_tpe(session, sweep)
        progress = _progress({str(s): sum(1 for j in jobs if j.status == s) for s in JobStatus})
        return SweepRead(**_summary(sweep, progress).model_dump(), jobs=jobs, report=report)
    main = main_metric(str(sweep.base_spec.get("task")))
    rows, _ = read_sweep_rows(session, sweep, "test")
    progress = _progress({str(s): sum(1 for r in rows if r.status == s) for s in JobStatus})
    report = build_report(rows, list(sweep.grid), main)
    importance = tpe.grid_importance(sweep.grid, report)
    if importance:
        for path, effect in report.parameters.items():
            effect.importance = importance.get(path)
    jobs = [
        SweepJob(
            id=r.id,
            setting=r.setting,
            setting_key=r.setting_key,
            seed=r.seed,
            status=JobStatus(r.status),
            main_metric=r.metrics.get(main),
        )
        for r in rows
    ]
    return SweepRead(**_summary(sweep, progress).model_dump(), jobs=jobs, report=report)


# --- cancelling ----------------------------------------------------------------------------------


def cancel_sweep(session: Session, project: Project, sweep_id: str) -> SweepCancel:
    """Cancel the sweep's queued jobs now and ask its running ones to stop within one epoch."""
    sweep = get_sweep(session, project, sweep_id)
    if sweep.search == search.SEARCH:
        search.stop_search(session, sweep.id)  # first: no trial is asked once its jobs are cancelled
    active = list(session.scalars(select(Job).where(Job.sweep_id == sweep.id, Job.status.in_(ACTIVE))))
    cancelled = requested = 0
    for job in active:
        outcome = state.request_cancel(session, job)
        if outcome == JobStatus.CANCELLED:
            cancelled += 1
        elif outcome == JobStatus.RUNNING:
            requested += 1
    if cancelled:
        dispatch(active)  # places in flight freed by the cancelled jobs go to the next jobs
    return SweepCancel(
        id=sweep.id,
        cancelled=cancelled,
        cancel_requested=requested,
        progress=progress_by_sweep(session, [sweep.id])[sweep.id],
    )


def delete_sweep(session: Session, project: Project, sweep_id: str) -> None:
    """Delete a sweep whose jobs have all finished, with those jobs (409 while any is queued or running)."""
    sweep = get_sweep(session, project, sweep_id)
    # The sweep's row locked first: a search asking its next trial (which updates this row in the
    # transaction that adds the trial) waits for the delete, then finds the sweep gone. The jobs and
    # the sweep go in one transaction: the jobs were committed away before, a trial asked meanwhile
    # made the sweep's delete fail (a 500), and the search went on without its history.
    session.execute(select(Sweep.id).where(Sweep.id == sweep.id).with_for_update())
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep.id)))
    try:
        delete_jobs(session, jobs, also=[sweep])
    except Conflict as exc:
        if exc.code != "job_active":
            raise
        active = len(exc.details["jobs"])
        message = f"sweep '{sweep.id}' has {active} queued or running job(s); cancel the sweep first"
        raise Conflict("sweep_active", message, exc.details) from exc
    except IntegrityError as exc:  # SQLite: a trial added between the read and the delete (no row locks)
        session.rollback()
        message = f"sweep '{sweep.id}' asked a new trial meanwhile; cancel the sweep first"
        raise Conflict("sweep_active", message, {"jobs": []}) from exc
