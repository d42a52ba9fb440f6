"""Ask-and-tell for "tpe" sweeps: trials are ordinary jobs, and Optuna's study is rebuilt from them.

Why rebuild instead of Optuna's RDB storage: SQL already holds every trial (its setting, status,
final validation metrics and per-epoch curve), Optuna's own tables would duplicate that state and
bring a second schema history into the project's database, and an in-memory study rebuilt from
the jobs can never disagree with them. What the pruner remembers about a trial (Hyperband's rung
values) is kept on the job (``trial_attrs``), so the rebuilt study decides as the live one would.

The invariants live in SQL:
- ``sweeps.jobs_asked`` counts the jobs asked so far; every ask advances it with one conditional
  UPDATE (``WHERE jobs_asked = <what was read>``) in the same transaction that inserts the jobs, so
  two processes that finish trials at once can never both ask, and the sweep never exceeds its
  trial budget, ``max_jobs`` or ``parallelism``;
- ``(sweep_id, trial_number)`` is unique: a trial is asked once, and runs as one job;
- whoever notices a free slot asks: the worker that finished a trial, and every worker's recovery
  loop (after an API or worker restart, or a broker that lost its messages), so a search never stalls.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.datasets.service import get_dataset
from app.db import new_session
from app.errors import AppError
from app.jobs.service import dispatch, fit_spec_to_dataset, new_job, parse_spec, resolve_within_limits
from app.jobs.status import ACTIVE, JobStatus
from app.models import EpochMetric, Job, JobMetric, Project, Sweep, utcnow
from app.sweeps import grid as grids
from app.sweeps import space as spaces
from worker.engine.defaults import TrainingShape
from worker.engine.metrics import lower_is_better
from worker.engine.spec import JobSpec

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = "tpe"
PRUNERS = ("median", "hyperband")
# Per-epoch validation metrics the engine reports (worker.engine.training.fit): the only objectives
# a pruner can follow epoch by epoch.
EPOCH_METRICS = {"classification": "accuracy", "tagging": "accuracy", "regression": "rmse", "forecast": "rmse"}
HYPERBAND_REDUCTION_FACTOR = 3
_ASK_ATTEMPTS = 8


def default_startup_trials(trial_budget: int) -> int:
    """Random trials before TPE models the results (and completed trials before median pruning)."""
    return max(1, min(10, trial_budget // 4))


def confirm_reserve(confirm_seeds: Sequence[int] | None, trial_seed: int) -> int:
    """Jobs of max_jobs held back for confirmation: the best and the runner-up, once per seed other
    than the trial seed (which their trials ran with already: it was reserved and never run)."""
    return 2 * len([seed for seed in confirm_seeds or [] if seed != trial_seed])


def trial_budget(sweep: Sweep) -> int:
    return sweep.max_jobs - confirm_reserve(sweep.confirm_seeds, _trial_seed(sweep))


def objective_metric(sweep: Sweep) -> str:
    assert sweep.objective is not None
    return sweep.objective.split(".", 1)[1]


def direction(sweep: Sweep) -> Literal["minimize", "maximize"]:
    return "minimize" if lower_is_better(objective_metric(sweep)) else "maximize"


def make_pruner(name: str | None, epochs: int, startup_trials: int) -> optuna.pruners.BasePruner:
    """The pruner, with every setting fixed (nothing estimated), so a rebuilt study decides the same."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, epochs), reduction_factor=HYPERBAND_REDUCTION_FACTOR
        )
    return optuna.pruners.NopPruner()


def make_sampler(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    # constant_liar: trials still running count as (pessimistic) results, so parallel asks spread out.
    # NumPy's generator takes seeds below 2**32.
    return optuna.samplers.TPESampler(seed=seed % 2**32, n_startup_trials=startup_trials, constant_liar=True)


# --- the study, rebuilt from the jobs --------------------------------------------------------------


@dataclass
class TrialRow:
    job_id: str
    number: int
    setting: dict[str, Any]
    status: str
    value: float | None = None
    curve: dict[int, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def _trial_state(status: str, value: float | None) -> TrialState:
    if status in ACTIVE:
        return TrialState.RUNNING
    if status == JobStatus.SUCCEEDED and value is not None and math.isfinite(value):
        return TrialState.COMPLETE
    if status == JobStatus.PRUNED:
        return TrialState.PRUNED
    return TrialState.FAIL


def frozen_trial(row: TrialRow, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    state = _trial_state(row.status, row.value)
    return create_trial(
        state=state,
        value=row.value if state == TrialState.COMPLETE else None,
        params={path: row.setting[path] for path in dists},
        distributions=dists,
        intermediate_values={step: v for step, v in row.curve.items() if math.isfinite(v)},
        system_attrs=dict(row.attrs),
    )


def build_study(
    sweep: Sweep, rows: Sequence[TrialRow], *, sampler_seed: int = 0, with_pruner: bool = True
) -> optuna.Study:
    """An in-memory study holding every trial in trial-number order (the numbers Optuna sees match)."""
    epochs = int(sweep.base_spec.get("training", {}).get("epochs") or 1)
    startup = sweep.startup_trials or default_startup_trials(trial_budget(sweep))
    study = optuna.create_study(
        study_name=sweep.id,
        direction=direction(sweep),
        sampler=make_sampler(sampler_seed, startup),
        pruner=make_pruner(sweep.pruner if with_pruner else None, epochs, startup),
    )
    dists = spaces.distributions(_space(sweep))
    for row in sorted(rows, key=lambda r: r.number):
        study.add_trial(frozen_trial(row, dists))
    return study


def _space(sweep: Sweep) -> dict[str, spaces.ParameterRange]:
    return {path: spaces.ParameterRange.model_validate(rng) for path, rng in (sweep.space or {}).items()}


def load_trials(session: Session, sweep: Sweep, *, with_curves: bool) -> list[TrialRow]:
    """Every trial job of the sweep with its final objective value and, if asked, its per-epoch curve."""
    metric = objective_metric(sweep)
    rows = {
        job_id: TrialRow(job_id, int(number), setting or {}, status, attrs=attrs or {})
        for job_id, number, setting, status, attrs in session.execute(
            select(Job.id, Job.trial_number, Job.setting, Job.status, Job.trial_attrs).where(
                Job.sweep_id == sweep.id, Job.trial_number.is_not(None)
            )
        )
    }
    for job_id, value in session.execute(
        select(JobMetric.job_id, JobMetric.value)
        .join(Job, Job.id == JobMetric.job_id)
        .where(
            Job.sweep_id == sweep.id,
            Job.trial_number.is_not(None),
            JobMetric.split == "val",
            JobMetric.name == metric,
        )
    ):
        # A trial that ended between the two reads (SQLite reads outside a transaction see each commit)
        # is left for the next read, not a KeyError.
        if job_id in rows:
            rows[job_id].value = value
    if with_curves:
        epoch_metric = EPOCH_METRICS.get(str(sweep.base_spec.get("task")), metric)
        for job_id, epoch, value in session.execute(
            select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.value)
            .join(Job, Job.id == EpochMetric.job_id)
            .where(
                Job.sweep_id == sweep.id,
                Job.trial_number.is_not(None),
                EpochMetric.split == "val",
                EpochMetric.name == epoch_metric,
            )
        ):
            if value is not None and job_id in rows:
                rows[job_id].curve[int(epoch)] = float(value)
    return list(rows.values())


# --- asking ----------------------------------------------------------------------------------------


def _trial_seed(sweep: Sweep) -> int:
    return int(sweep.seeds[0]) if sweep.seeds else 0


def _setting_job(session: Session, sweep: Sweep, setting: dict[str, Any], seed: int, number: int | None) -> Job:
    raw = grids.build_spec(sweep.base_spec, setting, seed)
    if raw.get("name") is None and sweep.name:
        raw["name"] = sweep.name
    spec = parse_spec(raw)  # every point of the space parses: each parameter's ends were checked at submit
    project = session.get(Project, sweep.project_id)
    assert project is not None
    try:
        resolved = _resolved(session, sweep, spec)
    except AppError as exc:
        # A point inside the space that this server cannot run (a combination of choices past the
        # training-memory limit that no checked end reached): the trial fails at once, saying why, and
        # the search goes on (it raised here on every ask before, and the search never moved again).
        job = new_job(project, spec, sweep_id=sweep.id, setting=setting)
        job.status, job.error_type, job.error_message = JobStatus.FAILED, exc.code, exc.message[:2000]
        job.progress_epochs, job.finished_at = 0, utcnow()
    else:
        job = new_job(project, resolved, sweep_id=sweep.id, setting=setting)
    job.trial_number = number
    return job


# The sizes each distinct data section gives (a search asks one trial at a time: the dataset is read
# once per process and section, not once per trial). Datasets never change; bounded like a cache.
_SHAPES: OrderedDict[str, TrainingShape] = OrderedDict()
_SHAPES_KEPT = 64


def _resolved(session: Session, sweep: Sweep, spec: JobSpec) -> JobSpec:
    """The trial's spec with its "auto" values resolved from the dataset, as a single job's or a grid
    setting's are at submit (the stored spec shows what ran: it held "auto" before), within the
    server's training-memory limit (``AppError`` ``model_too_large`` past it)."""
    # What the sizes depend on: the data and text sections, the task and the seed (the split's draw,
    # and the text length seen in the training part).
    key = json.dumps(
        [
            sweep.dataset_id,
            spec.task,
            spec.training.seed,
            spec.data.model_dump(mode="json"),
            None if spec.text is None else spec.text.model_dump(mode="json"),
        ],
        sort_keys=True,
    )
    shape = _SHAPES.get(key)
    if shape is None:
        shape, _ = fit_spec_to_dataset(spec, get_dataset(session, sweep.project_id, sweep.dataset_id))
        _SHAPES[key] = shape
        while len(_SHAPES) > _SHAPES_KEPT:
            _SHAPES.popitem(last=False)
    _SHAPES.move_to_end(key)
    return resolve_within_limits(spec, shape)


def confirmation_plan(sweep: Sweep, rows: Sequence[TrialRow]) -> list[tuple[dict[str, Any], int]]:
    """(setting, seed) of each confirmation run: the best and the runner-up *setting* by the
    validation objective (a setting the search proposed twice is one candidate, at its best trial),
    with every confirm seed but the one their trial already ran with."""
    done = [r for r in rows if _trial_state(r.status, r.value) == TrialState.COMPLETE]
    lower = direction(sweep) == "minimize"
    ranked = sorted(done, key=lambda r: ((r.value if lower else -(r.value or 0.0)), r.number))
    top: list[dict[str, Any]] = []
    for row in ranked:
        if row.setting not in top:
            top.append(row.setting)
        if len(top) == 2:
            break
    trial_seed = _trial_seed(sweep)
    return [(setting, seed) for setting in top for seed in (sweep.confirm_seeds or []) if seed != trial_seed]


def _ask(session: Session, sweep_id: str) -> list[Job] | None:
    """Ask the jobs this sweep has room for, in one transaction; None when another process won the race."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.search != SEARCH or sweep.stopped:
        return []
    asked = sweep.jobs_asked
    in_flight = int(session.scalar(select(func.count()).where(Job.sweep_id == sweep.id, Job.status.in_(ACTIVE))) or 0)
    budget = trial_budget(sweep)
    assert sweep.parallelism is not None
    room = sweep.parallelism - in_flight
    if room <= 0:
        return []
    jobs: list[Job] = []
    if asked < budget:
        rows = load_trials(session, sweep, with_curves=True)
        # A fresh sampler seeded by the first trial number it asks: the draw is reproducible, and
        # two asks never share a random stream.
        study = build_study(sweep, rows, sampler_seed=int(sweep.random_seed or 0) + asked, with_pruner=False)
        dists = spaces.distributions(_space(sweep))
        for number in range(asked, min(budget, asked + room)):
            trial = study.ask(dists)
            setting = {path: trial.params[path] for path in dists}
            jobs.append(_setting_job(session, sweep, setting, _trial_seed(sweep), number))
    elif in_flight == 0 and sweep.confirm_seeds:
        # Every trial has ended, so the best and runner-up are final: confirm them, parallelism at a time.
        plan = confirmation_plan(sweep, load_trials(session, sweep, with_curves=False))
        start = asked - budget
        for setting, seed in plan[start : start + room]:
            jobs.append(_setting_job(session, sweep, setting, seed, None))
    if not jobs:
        return []
    won = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep.id, Sweep.jobs_asked == asked, Sweep.stopped.is_(False))
        .values(jobs_asked=asked + len(jobs))
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.add_all(jobs)
    session.commit()
    return jobs


def advance_search(sweep_id: str) -> list[str]:
    """Fill the sweep's free slots with newly asked trials (or confirmation runs); the new job ids."""
    for _ in range(_ASK_ATTEMPTS):
        with new_session() as session:
            try:
                jobs = _ask(session, sweep_id)
            except (OperationalError, IntegrityError) as exc:
                # SQLite "database is locked" or a lost race on (sweep_id, trial_number): read again.
                session.rollback()
                log.info("sweep %s: ask raced another process (%s); retrying", sweep_id, type(exc).__name__)
                continue
            if jobs is None:
                continue
            ids = [j.id for j in jobs]
            if jobs:
                dispatch(jobs)
                log.info("sweep %s: asked %d job(s): %s", sweep_id, len(jobs), ids)
            return ids
    return []


def advance_searches() -> dict[str, list[str]]:
    """One pass over every unfinished tpe sweep (the recovery loop): nothing stalls after a restart.

    A search found done is marked stopped, so later passes skip it without reading its trials.
    """
    with new_session() as session:
        sweep_ids = list(session.scalars(select(Sweep.id).where(Sweep.search == SEARCH, Sweep.stopped.is_(False))))
        open_ids = []
        for sid in sweep_ids:
            if search_done(session, sid):
                stop_search(session, sid)  # done is final: nothing can be asked any more
            else:
                open_ids.append(sid)
    asked: dict[str, list[str]] = {}
    for sid in open_ids:
        try:
            ids = advance_search(sid)
        except Exception:  # one search that cannot ask (its store unreachable…) does not stop the others
            log.exception("sweep %s: asking for trials failed; the next recovery pass tries again", sid)
            continue
        if ids:
            asked[sid] = ids
    return asked


def search_done(session: Session, sweep_id: str) -> bool:
    """No job is queued or running and nothing is left to ask (or the sweep was cancelled)."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.search != SEARCH:
        return True
    statuses = list(session.scalars(select(Job.status).where(Job.sweep_id == sweep_id)))
    return is_done(sweep, statuses, lambda: load_trials(session, sweep, with_curves=False))


def trials_ended(sweep: Sweep, statuses: Sequence[str]) -> bool:
    """Every trial was asked and none is queued or running (``statuses``: all the sweep's jobs, read
    after the sweep row: confirmation runs only start once this holds, so none can be active then)."""
    return sweep.jobs_asked >= trial_budget(sweep) and not any(s in ACTIVE for s in statuses)


def is_done(sweep: Sweep, statuses: Sequence[str], trials: Callable[[], Sequence[TrialRow]]) -> bool:
    """``search_done`` over one reading of the jobs' ``statuses`` (the sweep row read before them)."""
    if any(s in ACTIVE for s in statuses):
        return False
    if sweep.stopped:
        return True
    if not trials_ended(sweep, statuses):
        return False
    if not sweep.confirm_seeds:
        return True
    return sweep.jobs_asked >= trial_budget(sweep) + len(confirmation_plan(sweep, trials()))


def stop_search(session: Session, sweep_id: str) -> None:
    """No more asks for this sweep (it is being cancelled); committed before its jobs are cancelled."""
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(stopped=True))
    session.commit()


# --- pruning ---------------------------------------------------------------------------------------


def should_prune(job_id: str) -> bool:
    """Ask the sweep's pruner about a running trial, from the curves stored so far (this epoch's too).

    What the pruner notes about the trial (a rung it reached) is stored on the job for later decisions.
    """
    with new_session() as session:
        job = session.get(Job, job_id)
        if job is None or job.sweep_id is None or job.trial_number is None:
            return False
        sweep = session.get(Sweep, job.sweep_id)
        if sweep is None or sweep.search != SEARCH or not sweep.pruner:
            return False
        rows = load_trials(session, sweep, with_curves=True)
        study = build_study(sweep, rows)
        trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == job.trial_number)
        current = next(r for r in rows if r.number == job.trial_number)
        if not current.curve:
            return False
        prune = optuna.trial.Trial(study, trial_id).should_prune()
        attrs = study._storage.get_trial(trial_id).system_attrs
        if attrs != current.attrs:
            session.execute(update(Job).where(Job.id == job_id).values(trial_attrs=attrs))
            session.commit()
        return bool(prune)


# --- importance ------------------------------------------------------------------------------------


def fanova_importance(
    points: Sequence[tuple[dict[str, Any], float]], dists: dict[str, BaseDistribution], lower: bool
) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each parameter (shares summing to 1), from (setting, value) pairs.

    None with fewer than two distinct values or parameters that never vary (nothing to attribute).
    """
    finite = [(s, v) for s, v in points if v is not None and math.isfinite(v)]
    if len(finite) < 2 or len({v for _, v in finite}) < 2:
        return None
    varying = {p: d for p, d in dists.items() if len({json.dumps(s.get(p)) for s, _ in finite}) > 1}
    if not varying:
        return None
    study = optuna.create_study(direction="minimize" if lower else "maximize")
    now = datetime.now(UTC)
    for setting, value in finite:
        trial = create_trial(
            value=value,
            params={p: setting[p] for p in varying},
            distributions=varying,
        )
        trial.datetime_start = trial.datetime_complete = now
        study.add_trial(trial)
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    except (ValueError, RuntimeError) as exc:  # e.g. a forest that cannot split
        log.info("importance not computed: %s", exc)
        return None
    return {p: float(shares.get(p, 0.0)) for p in dists}


def categorical_dists(grid: dict[str, list[Any]]) -> dict[str, BaseDistribution]:
    """Grid values as categorical distributions (JSON text for values Optuna cannot hold)."""
    return {
        path: CategoricalDistribution([json.dumps(v, sort_keys=True) for v in values]) for path, values in grid.items()
    }
