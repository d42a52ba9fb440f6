"""Creating and reporting "tpe" sweeps: the space checked against the dataset up front, then trials
asked as they are needed (:mod:`app.sweeps.search`)."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.loading import load_dataset_data
from app.datasets.service import get_dataset
from app.errors import AppError, InvalidInput
from app.jobs.service import check_spec_against_dataset, parse_spec
from app.jobs.status import JobStatus
from app.models import Project, Sweep, new_id
from app.sweeps import grid as grids
from app.sweeps import search, stats
from app.sweeps import space as spaces
from app.sweeps.report import SweepJobRow, build_report
from app.sweeps.rows import read_sweep_rows
from app.sweeps.schemas import (
    Confirmation,
    ConfirmedSetting,
    MetricSummary,
    SearchReport,
    SweepCreate,
    SweepJob,
    SweepReport,
)
from worker.engine.metrics import lower_is_better, main_metric, task_metrics

log = logging.getLogger(__name__)

# A swept parameter with more distinct values that ran than this gets no importance (a grid or random
# search's fANOVA treats each value as a category).
MAX_IMPORTANCE_LEVELS = 50

SELECTION_NOTE = (
    "trials are compared, and the best and runner-up chosen, on the validation objective only; "
    "test metrics are reported next to them and never used for selection"
)


def _objective_error(message: str, field: str = "objective") -> AppError:
    return InvalidInput(
        "invalid_objective", message, [{"field": field, "message": message, "type": "invalid_objective"}]
    )


def check_objective(body: SweepCreate, task: str) -> str:
    """The objective as 'val.<metric>' of this task (default: its main metric); 422 otherwise."""
    names = task_metrics(task)
    objective = body.objective or f"val.{main_metric(task)}"
    split, _, metric = objective.partition(".")
    if split == "test":
        raise _objective_error(
            f"objective '{objective}' is a test metric; a search selects on validation metrics only: use 'val.{metric}'"
        )
    if split != "val" or metric not in names:
        raise _objective_error(
            f"objective '{objective}' is not 'val.<metric>' with a {task} metric: {', '.join(names)}"
        )
    if body.pruner is not None and metric != search.EPOCH_METRICS[task]:
        raise _objective_error(
            f"pruner '{body.pruner}' follows the metric reported every epoch, val.{search.EPOCH_METRICS[task]} "
            f"for {task}; use it as the objective or set pruner to null",
            "pruner",
        )
    return objective


def _blame(field: str, blamed: str, point: dict[str, Any]) -> str:
    """A spec field renamed to the space parameter that produced it (``space.model.hidden_size.high``)."""
    for path in point:
        if field == path or field.startswith(path + ".") or path.startswith(field + ".") or not field:
            return blamed if blamed != "space" else f"space.{path}"
    return f"base.{field}"


def _check_point(base: dict[str, Any], point: dict[str, Any], blamed: str, seed: int) -> Any:
    raw = grids.build_spec(base, point, seed)
    try:
        return parse_spec(raw)
    except AppError as exc:
        details = [{**d, "field": _blame(d["field"], blamed, point), "point": point} for d in (exc.details or [])]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        raise InvalidInput("invalid_space", message, details) from exc


def create_tpe_sweep(session: Session, project: Project, body: SweepCreate) -> Sweep:
    """Check the space, budget, objective and every bounding point against the dataset; store the
    sweep; then ask its first ``parallelism`` trials. 422 naming the parameter, and nothing stored."""
    if body.grid:
        raise grids.grid_error("a tpe search takes its parameters from 'space', not 'grid'", "grid", "invalid_space")
    space = body.space or {}
    spaces.check_space(space)
    if "seeds" in body.model_fields_set and len(body.seeds) > 1:
        raise grids.grid_error(
            "a tpe search runs each trial once, with one seed; give one seed, and confirm the winner "
            "with several seeds in 'confirm_seeds'",
            "seeds",
            "invalid_space",
        )
    base_seed = (body.base.get("training") or {}).get("seed", 0) if isinstance(body.base.get("training"), dict) else 0
    trial_seed = int(body.seeds[0]) if "seeds" in body.model_fields_set else int(base_seed or 0)
    confirm = body.confirm_seeds or []
    repeated = sorted({s for s in confirm if confirm.count(s) > 1})
    if repeated:
        raise grids.grid_error(f"confirm_seeds must not repeat; repeated: {repeated}", "confirm_seeds", "invalid_space")
    reserve = search.confirm_reserve(confirm, trial_seed)
    least = reserve + (2 if confirm else 1)
    if body.max_jobs < least:
        raise grids.grid_error(
            f"max_jobs={body.max_jobs} leaves no room for trials: confirming the best and runner-up with "
            f"{reserve // 2} seed(s) besides the trial seed holds back {reserve} jobs; raise max_jobs to at "
            f"least {least}",
            "max_jobs",
            "too_many_jobs",
        )
    server_max = get_settings().max_sweep_jobs
    if body.max_jobs > server_max:
        raise InvalidInput(
            "too_many_jobs",
            f"max_jobs={body.max_jobs} is more than this server allows per sweep ({server_max}, RNNLAB_MAX_SWEEP_JOBS)",
            {"max_jobs": body.max_jobs, "limit": server_max},
        )

    base_spec = _check_point(body.base, {}, "base", trial_seed)
    objective = check_objective(body, base_spec.task)
    dataset = get_dataset(session, project.id, base_spec.dataset_id)
    data: Any = None
    if any(path == "data" or path.startswith("data.") for path in space):
        data = load_dataset_data(dataset, None)  # swept data fields may need any column
    for blamed, point in spaces.check_points(space):
        spec = _check_point(body.base, point, blamed, trial_seed)
        try:
            data = check_spec_against_dataset(spec, dataset, data)
        except AppError as exc:
            details = [
                {**d, "field": _blame(grids.cost_field(d, point), blamed, point), "point": point}
                for d in (exc.details or [])
            ]
            fields = ", ".join(d["field"] for d in details)
            raise exc.with_message(f"{fields}: {exc.message}", details) from exc

    sweep = Sweep(
        id=new_id(),
        project_id=project.id,
        dataset_id=dataset.id,
        name=body.name,
        base_spec=body.base,
        grid={},
        seeds=[trial_seed],
        search=search.SEARCH,
        max_jobs=body.max_jobs,
        space={path: rng.model_dump(exclude_none=True, exclude_defaults=True) for path, rng in space.items()},
        parallelism=body.parallelism,
        objective=objective,
        pruner=body.pruner,
        startup_trials=body.startup_trials,
        confirm_seeds=confirm or None,
        random_seed=body.random_seed,
        jobs_asked=0,
    )
    session.add(sweep)
    session.commit()
    # Asked after the commit: if this process dies here, or the ask fails (the store unreachable while
    # the dataset is read), a worker's recovery loop asks instead; the sweep is stored either way.
    try:
        search.advance_search(sweep.id)
    except Exception:
        log.exception("sweep %s: the first ask failed; the recovery loop asks again", sweep.id)
    return sweep


# --- reading -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _cached_importance(points_json: str, space_json: str, lower: bool) -> dict[str, float] | None:
    points = [(setting, value) for setting, value in json.loads(points_json)]
    space = {p: spaces.ParameterRange.model_validate(r) for p, r in json.loads(space_json).items()}
    return search.fanova_importance(points, spaces.distributions(space), lower)


def tpe_importance(sweep: Sweep, trial_rows: list[SweepJobRow], metric: str) -> dict[str, float] | None:
    """fANOVA over the trials that completed (confirmation runs repeat a setting: left out)."""
    points = [
        (r.setting, r.metrics[metric])
        for r in trial_rows
        if r.trial_number is not None and r.status == JobStatus.SUCCEEDED and r.metrics.get(metric) is not None
    ]
    return _cached_importance(
        json.dumps(points, sort_keys=True), json.dumps(sweep.space, sort_keys=True), lower_is_better(metric)
    )


@functools.lru_cache(maxsize=256)
def _cached_grid_importance(points_json: str, grid_json: str, lower: bool) -> dict[str, float] | None:
    grid = json.loads(grid_json)
    points = [
        ({p: json.dumps(setting.get(p), sort_keys=True) for p in grid}, value)
        for setting, value in json.loads(points_json)
    ]
    return search.fanova_importance(points, search.categorical_dists(grid), lower)


def grid_importance(grid: dict[str, list[Any]], report: SweepReport) -> dict[str, float] | None:
    """fANOVA over the setting means of a grid or random sweep (the values its report ranks)."""
    points = [
        (s.setting, s.metrics[report.main_metric].mean) for s in report.settings if report.main_metric in s.metrics
    ]
    if len(points) < 2 or not grid:
        return None
    # The values that ran, not every value of the grid: a random search over 500,000 learning rates
    # made fANOVA a category of each (minutes of CPU and 8.8 GB for one GET of the sweep).
    seen = {path: {json.dumps(setting.get(path), sort_keys=True) for setting, _ in points} for path in grid}
    ran = {path: [v for v in values if json.dumps(v, sort_keys=True) in seen[path]] for path, values in grid.items()}
    if any(len(values) > MAX_IMPORTANCE_LEVELS for values in ran.values()):
        return None  # more levels than fANOVA can tell apart from a sweep's settings
    return _cached_grid_importance(
        json.dumps(points, sort_keys=True), json.dumps(ran, sort_keys=True), report.lower_is_better
    )


def _confirmed(
    setting: dict[str, Any],
    rows: list[SweepJobRow],
    test: dict[str, dict[str, float | None]],
    metric: str,
    test_metric: str,
    lower: bool,
) -> ConfirmedSetting:
    """The confirmation runs' statistics: fresh runs only. The trial that won the selection is left
    out (its value is the best of many noisy draws, biased by having been chosen) and reported beside
    them as ``trial_objective``."""
    key = json.dumps(setting, sort_keys=True)
    ran = [r for r in rows if r.setting_key == key and r.status == JobStatus.SUCCEEDED]
    by_seed: dict[int, SweepJobRow] = {}
    for r in ran:
        if r.trial_number is None:
            by_seed.setdefault(r.seed, r)
    done = list(by_seed.values())
    trial_values = [v for r in ran if r.trial_number is not None and (v := r.metrics.get(metric)) is not None]

    def summary(values: list[float], name: str) -> MetricSummary | None:
        if not values:
            return None
        return MetricSummary.model_validate(stats.summarize(values, bounds=stats.metric_bounds(name)).as_dict())

    objective = [v for r in done if (v := r.metrics.get(metric)) is not None]
    tests = [v for r in done if (v := test.get(r.id, {}).get(test_metric)) is not None]
    return ConfirmedSetting(
        setting_key=key,
        setting=setting,
        seeds=sorted(r.seed for r in done),
        objective=summary(objective, metric),
        test=summary(tests, test_metric),
        trial_objective=(min if lower else max)(trial_values) if trial_values else None,
    )


def read_tpe(session: Session, sweep: Sweep) -> tuple[list[SweepJob], SweepReport]:
    """The jobs and the report of a tpe sweep: ranked on the validation objective, with the search's state."""
    metric = search.objective_metric(sweep)
    task = str(sweep.base_spec.get("task"))
    test_metric = main_metric(task)
    rows, finals = read_sweep_rows(session, sweep, "val")
    importance = tpe_importance(sweep, rows, metric)
    report = build_report(rows, list(sweep.space or {}), metric, split="val", importance=importance)

    # One reading of the jobs decides both the confirmation and "done", so they agree with the jobs
    # listed (the sweep row was read before them).
    statuses = [r.status for r in rows]
    trial_rows = search.load_trials(session, sweep, with_curves=False)
    done = search.is_done(sweep, statuses, lambda: trial_rows)
    confirmation = None
    if sweep.confirm_seeds:
        # The best and runner-up are final once every trial has ended (confirmation runs then start).
        ended = search.trials_ended(sweep, statuses) or sweep.jobs_asked > search.trial_budget(sweep)
        plan = search.confirmation_plan(sweep, trial_rows) if ended else []
        settings: list[dict[str, Any]] = []
        for setting, _ in plan:
            if setting not in settings:
                settings.append(setting)
        lower = search.direction(sweep) == "minimize"
        confirmed = [_confirmed(s, rows, finals["test"], metric, test_metric, lower) for s in settings]
        confirmation = Confirmation(
            seeds=list(sweep.confirm_seeds),
            best=confirmed[0] if confirmed else None,
            runner_up=confirmed[1] if len(confirmed) > 1 else None,
        )
    report.search = SearchReport(
        objective=sweep.objective or f"val.{metric}",
        direction=search.direction(sweep),  # type: ignore[arg-type]
        pruner=sweep.pruner,
        trial_budget=search.trial_budget(sweep),
        trials=sum(1 for r in rows if r.trial_number is not None),
        pruned=sum(1 for r in rows if r.status == JobStatus.PRUNED),
        done=done,
        selection=SELECTION_NOTE,
        confirmation=confirmation,
    )
    report.complete = report.complete and report.search.done
    jobs = [
        SweepJob(
            id=r.id,
            setting=r.setting,
            setting_key=r.setting_key,
            seed=r.seed,
            status=JobStatus(r.status),
            main_metric=finals["test"].get(r.id, {}).get(test_metric),
            trial_number=r.trial_number,
            objective_value=r.metrics.get(metric),
        )
        for r in rows
    ]
    return jobs, report
