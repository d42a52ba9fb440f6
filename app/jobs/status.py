"""The job status vocabulary and the one table of allowed transitions.

Every status check and query uses these names; :mod:`app.jobs.state` performs the transitions,
each as one conditional UPDATE, and refuses any move this table does not allow.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINISHED: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED}
)

# from → to, and why. Finished is final: a finished job never runs again.
TRANSITIONS: dict[tuple[JobStatus, JobStatus], str] = {
    (JobStatus.QUEUED, JobStatus.RUNNING): "a worker claims it (exclusive, with a lease)",
    (JobStatus.QUEUED, JobStatus.CANCELLED): "cancelled before it started",
    (JobStatus.RUNNING, JobStatus.SUCCEEDED): "training and evaluation finished; results stored",
    (JobStatus.RUNNING, JobStatus.FAILED): "a data or training error, or its worker was lost on every attempt",
    (JobStatus.RUNNING, JobStatus.CANCELLED): "cancel requested; stopped at the next epoch",
    (JobStatus.RUNNING, JobStatus.PRUNED): "a search trial the pruner stopped after an epoch; its curve is kept",
    (JobStatus.RUNNING, JobStatus.QUEUED): "its lease expired (attempts left) or its worker shut down warmly",
}


def allowed(source: JobStatus, target: JobStatus) -> bool:
    return (source, target) in TRANSITIONS


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job may move to ``target`` from."""
    return frozenset(s for s, t in TRANSITIONS if t == target)
