"""Many jobs in a few multi-row INSERTs, for the query-plan and paging tests (no training)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select

from app.auth import get_or_create_project
from app.db import new_session
from app.models import Dataset, Job, JobMetric, new_id, utcnow
from tests.stack import forecast_spec
from worker.engine import JobSpec

CELLS = ("rnn", "lstm", "gru")
STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "queued", "cancelled")


def seed_jobs(project_name: str, count: int, seed: int = 0) -> list[str]:
    """``count`` jobs of one project with varied columns and final values; some values missing."""
    rng = random.Random(seed)
    now = utcnow()
    with new_session() as session:
        project = get_or_create_project(session, project_name)
        dataset = Dataset(
            project_id=project.id,
            name="d",
            filename="d.csv",
            format="csv",
            size_bytes=1,
            sha256=new_id(),
            storage_key="k",
        )
        session.add(dataset)
        session.flush()
        # Rows as wide as real ones (the normalized spec and a summary), so the planner costs them alike.
        spec = JobSpec.model_validate(forecast_spec(dataset.id)).normalized()
        summary = {"best_epoch": 40, "train": {"rmse": 0.1, "mae": 0.1}, "val": {"rmse": 0.2}, "test": {"rmse": 0.3}}
        jobs: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        for i in range(count):
            status = rng.choice(STATUSES)
            cell = rng.choice(CELLS)
            job_id = new_id()
            created = now - timedelta(seconds=count - i, microseconds=rng.randrange(1000))
            jobs.append(
                {
                    "id": job_id,
                    "project_id": project.id,
                    "dataset_id": dataset.id,
                    "name": None if i % 7 == 0 else f"job-{rng.randrange(count)}",
                    "status": status,
                    "spec": {
                        **spec,
                        "model": {**spec["model"], "cell": cell, "hidden_size": rng.choice((8, 16, 32))},
                        "training": {**spec["training"], "seed": i},
                    },
                    "summary": summary if status == "succeeded" else None,
                    "task": "forecast",
                    "cell": cell,
                    "attempts": rng.randrange(1, 4),
                    "created_at": created,
                    # Two jobs in a row share a time: the id breaks the tie.
                    "finished_at": None if status == "queued" else created.replace(microsecond=0),
                }
            )
            if status == "succeeded":
                values += [
                    {"job_id": job_id, "project_id": project.id, "split": "test", "name": "rmse", "value": v}
                    for v in [round(rng.random(), 2)]  # rounded: ties on the value, broken by id
                ]
                values.append(
                    {
                        "job_id": job_id,
                        "project_id": project.id,
                        "split": "best.val",
                        "name": "loss",
                        "value": rng.random(),
                    }
                )
        for start in range(0, len(jobs), 1000):
            session.execute(insert(Job), jobs[start : start + 1000])
        for start in range(0, len(values), 1000):
            session.execute(insert(JobMetric), values[start : start + 1000])
        session.commit()
        return list(session.scalars(select(Job.id).where(Job.project_id == project.id)))
