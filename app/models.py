"""ORM tables. SQL is the single source of truth for datasets, jobs, metrics and evaluations."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.jobs.status import JobStatus

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def db_now(session: Session) -> Any:
    """ "Now" for what processes compare across machines — leases, dispatch times, worker heartbeats:
    the database's clock on PostgreSQL (a SQL expression, evaluated by the server, so workers whose
    clocks disagree still agree on when a lease runs out), this process's clock on SQLite (one machine).
    Usable in ``values()`` and ``where()``, and with ``+``/``-`` a ``timedelta``."""
    if session.get_bind().dialect.name == "postgresql":
        return func.statement_timestamp(type_=DateTime(timezone=True))
    return utcnow()


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_project_created", "project_id", "created_at"),
        # Identical content is one dataset per project, also when two uploads race.
        UniqueConstraint("project_id", "sha256", "format", name="uq_datasets_project_content"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(300))
    filename: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    storage_key: Mapped[str] = mapped_column(String(300))
    num_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    columns: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    arrays: Mapped[dict[str, list[int]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_project_created", "project_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    seeds: Mapped[list[int]] = mapped_column(JSON)
    search: Mapped[str] = mapped_column(String(16))
    max_jobs: Mapped[int] = mapped_column(Integer)
    # A "tpe" search (null for grid and random): the typed space, how many trials run at once, the
    # validation metric it optimises, the pruner, the seeds the winner is confirmed with, the
    # sampler's seed, and the count of jobs asked so far (trials, then confirmation runs): every
    # ask advances it with one conditional UPDATE, so two processes can never ask the same job.
    space: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    parallelism: Mapped[int | None] = mapped_column(Integer, nullable=True)
    objective: Mapped[str | None] = mapped_column(String(80), nullable=True)
    pruner: Mapped[str | None] = mapped_column(String(16), nullable=True)
    startup_trials: Mapped[int | None] = mapped_column(Integer, nullable=True)
    confirm_seeds: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    random_seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    jobs_asked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stopped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # One index per sort of GET /jobs, each ending in id: keyset pages on (sort value, id) read
        # straight down the index, from page 1 to page 1,000 alike (see app/jobs/query.py).
        Index("ix_jobs_project_created_id", "project_id", "created_at", "id"),
        Index("ix_jobs_project_finished_id", "project_id", "finished_at", "id"),
        Index("ix_jobs_project_name_id", "project_id", "name", "id"),
        Index("ix_jobs_project_status_id", "project_id", "status", "id"),
        Index("ix_jobs_project_attempts_id", "project_id", "attempts", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        UniqueConstraint("sweep_id", "trial_number", name="uq_jobs_sweep_trial"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), nullable=True, index=True)
    setting: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    setting_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The trial's number in a tpe search (unique per sweep: a trial is asked once); null for grid,
    # random and confirmation jobs. trial_attrs keeps what the pruner remembers about the trial.
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_attrs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(32))
    cell: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(32), default="default")
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    progress_epoch: Mapped[int] = mapped_column(Integer, default=0)
    progress_epochs: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A retry's pause: the job is not dispatched before this time (set by state.retry_later).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class EpochMetric(Base):
    """One value of one metric for one split at one epoch (a narrow table: cheap to append and slice)."""

    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobMetric(Base):
    """A final value of a job, one row per (project, job, split, metric): what GET /jobs filters and sorts on.

    ``split`` is ``train``/``val``/``test`` for the final evaluation, and ``best.train``/``best.val``
    or ``last.train``/``last.val`` for the epoch metrics at the best and at the last epoch. Only
    numbers are stored (a missing value has no row), so the index below reads in sort order.
    """

    __tablename__ = "job_metrics"
    __table_args__ = (
        Index("ix_job_metrics_project_split_name_value", "project_id", "split", "name", "value", "job_id"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(32))
    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class Evaluation(Base):
    __tablename__ = "evaluations"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerHeartbeat(Base):
    """A live worker and the queues it serves, refreshed by its main process every recovery interval.

    Read (cached) to tell a queued job that no live worker serves its queue (``JobRead.waiting_for``).
    """

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(200))  # comma-separated
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
