"""Epoch metrics written while the database connection dies are kept and written later.

The failure is real: the runner's own PostgreSQL connection is terminated by the server
(``pg_terminate_backend``) just before it writes an epoch, so the write fails exactly as it does
when the server restarts. Only this test's own backends are terminated: restarting the shared
PostgreSQL server would break other test runs on it.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, func, select

from app.db import get_engine, new_session
from app.models import EpochMetric, Job
from tests.conftest import POSTGRES_URL
from tests.stack import forecast_spec, sine_csv


def _terminate(pid: int) -> None:
    """Terminate one backend from another connection and wait until it is gone."""
    url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} did not end")


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_epochs_written_during_a_connection_loss_are_kept_and_written_later(client, auth) -> None:
    import worker.runner as runner

    dataset = client.post("/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(200).encode())})
    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(dataset.json()["id"], epochs=4)).json()["id"]

    inserts = {"n": 0}
    killed: list[int] = []
    kill_on = {1, 2, 4}  # epochs 1 and 2 (written later with 3) and epoch 4 (written with the results)

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EPOCH_METRICS"):
            inserts["n"] += 1
            if inserts["n"] in kill_on:
                pid = conn.connection.dbapi_connection.info.backend_pid
                _terminate(pid)
                killed.append(pid)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", before_execute)
    try:
        assert runner.run_job(job_id, "w1") == "succeeded"
    finally:
        event.remove(engine, "before_cursor_execute", before_execute)

    assert len(killed) == 3  # three writes really lost their connection
    with new_session() as session:
        job = session.get(Job, job_id)
        per_epoch = dict(
            session.execute(
                select(EpochMetric.epoch, func.count()).where(EpochMetric.job_id == job_id).group_by(EpochMetric.epoch)
            ).all()
        )
    assert job is not None and job.status == "succeeded" and job.progress_epoch == 4
    assert sorted(per_epoch) == [1, 2, 3, 4]  # no hole
    assert len(set(per_epoch.values())) == 1  # and every epoch has all its metrics
