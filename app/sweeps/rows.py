"""Reading a sweep's jobs as report rows: one query for the jobs, one for their final values."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.status import JobStatus
from app.models import Job, JobMetric, Sweep
from app.sweeps.report import SweepJobRow

# split → job id → metric → value, for succeeded jobs only (a running or failed job has none that count).
FinalValues = dict[str, dict[str, dict[str, float | None]]]


def read_sweep_rows(session: Session, sweep: Sweep, rank_split: str) -> tuple[list[SweepJobRow], FinalValues]:
    """The sweep's jobs, oldest first, each carrying ``rank_split``'s final metrics; and the final
    values of the val and test splits."""
    job_rows = session.execute(
        select(Job.id, Job.setting, Job.setting_key, Job.status, Job.spec, Job.trial_number)
        .where(Job.sweep_id == sweep.id)
        .order_by(Job.created_at, Job.id)
    ).all()
    finals: FinalValues = {"val": {}, "test": {}}
    for job_id, split, name, value in session.execute(
        select(JobMetric.job_id, JobMetric.split, JobMetric.name, JobMetric.value)
        .join(Job, Job.id == JobMetric.job_id)
        .where(Job.sweep_id == sweep.id, Job.status == JobStatus.SUCCEEDED, JobMetric.split.in_(tuple(finals)))
    ):
        finals[split].setdefault(job_id, {})[name] = value
    rows = [
        SweepJobRow(
            id=job_id,
            setting=setting or {},
            setting_key=setting_key or "{}",
            seed=int(spec.get("training", {}).get("seed", 0)),
            status=status,
            metrics=finals[rank_split].get(job_id, {}),
            trial_number=trial_number,
        )
        for job_id, setting, setting_key, status, spec, trial_number in job_rows
    ]
    return rows, finals
