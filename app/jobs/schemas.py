"""Job schemas by role. The spec itself is the engine's JobSpec: one definition for API and worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.jobs import workers
from app.jobs.status import JobStatus
from app.models import Job
from worker.engine.results import Comparison, Summary
from worker.engine.spec import JobSpec

__all__ = ["JobSpec", "JobRead", "JobProgress", "JobError", "PredictRequest", "PredictResponse"]


class JobProgress(BaseModel):
    epoch: int
    epochs: int


class JobError(BaseModel):
    type: str
    message: str


class JobRead(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    spec: dict[str, Any]
    dataset_id: str
    sweep_id: str | None
    setting: dict[str, Any] | None = None
    progress: JobProgress
    attempts: int
    max_attempts: int
    cancel_requested: bool
    device: str | None
    queue: str
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None
    summary: Summary | None
    error: JobError | None
    waiting_for: str | None = Field(
        default=None,
        description="Queued and running jobs: what the job waits for when no live worker serves its queue "
        "(e.g. a device 'cuda' job while no GPU worker runs; a running job whose worker is gone with no "
        "other worker left); null otherwise.",
    )

    @classmethod
    def from_row(cls, job: Job) -> JobRead:
        epochs = job.progress_epochs or int(job.spec.get("training", {}).get("epochs", 0))
        return cls(
            id=job.id,
            name=job.name,
            status=JobStatus(job.status),
            spec=job.spec,
            dataset_id=job.dataset_id,
            sweep_id=job.sweep_id,
            setting=job.setting,
            progress=JobProgress(epoch=job.progress_epoch, epochs=epochs),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            device=job.device,
            queue=job.queue,
            worker=job.worker_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            train_seconds=job.train_seconds,
            summary=Summary.model_validate(job.summary) if job.summary else None,
            error=JobError(type=job.error_type, message=job.error_message or "") if job.error_type else None,
            waiting_for=workers.waiting_for(job.queue, running=job.status == JobStatus.RUNNING)
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
            else None,
        )


class MetricSeries(BaseModel):
    name: str
    split: str
    epochs: list[int]
    values: list[float | None]


class JobMetrics(BaseModel):
    job_id: str
    series: list[MetricSeries]


class JobHistory(BaseModel):
    job_id: str
    name: str | None
    status: str
    series: list[MetricSeries]


class ComparedMetrics(BaseModel):
    jobs: list[JobHistory] = Field(description="In the order asked (a repeated id once).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored

    inputs: list[Any] = Field(
        description="Input windows in original units: [N, T, F] (or [N, T] for one feature); for a text model "
        "a list of texts (strings; for tagging and token sequences also lists of words)."
    )


class PredictResponse(BaseModel):
    job_id: str
    predictions: Any


class LeaderboardEntry(BaseModel):
    rank: int
    job_id: str
    name: str | None
    cell: str
    sweep_id: str | None
    setting: dict[str, Any] | None
    seed: int | None = Field(None, description="training.seed of the job (tells a sweep's runs of one setting apart).")
    metric: str
    value: float
    interval: list[float] | None = Field(description="95% bootstrap interval from the evaluation (test split only).")
    comparison: dict[str, Comparison] | None = Field(description="Baseline comparison from the evaluation.")
    finished_at: datetime | None


class Leaderboard(BaseModel):
    dataset_id: str
    metric: str
    lower_is_better: bool
    items: list[LeaderboardEntry]
