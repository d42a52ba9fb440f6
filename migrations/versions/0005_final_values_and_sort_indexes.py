"""index-backed job lists: final values keyed by project (with best/last epoch values), one index per sort

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 08:30:00

``job_metrics`` becomes the narrow final-values table GET /jobs joins through: it gains
``project_id`` (backfilled from jobs), rows for the best and the last epoch's metrics
(``best.val``, ``last.train``…, backfilled from epoch_metrics for succeeded jobs), and one index
(project, split, name, value, job) that reads in sort order. Rows without a value are dropped: a
missing value has no row. Jobs get an index per sort, each ending in ``id`` for keyset paging.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JOB_SORT_INDEXES = {
    "ix_jobs_project_created_id": ["project_id", "created_at", "id"],
    "ix_jobs_project_finished_id": ["project_id", "finished_at", "id"],
    "ix_jobs_project_name_id": ["project_id", "name", "id"],
    "ix_jobs_project_status_id": ["project_id", "status", "id"],
    "ix_jobs_project_attempts_id": ["project_id", "attempts", "id"],
}


def _backfill_epoch_values() -> None:
    best_epoch = (
        "CAST(json_extract(j.summary, '$.best_epoch') AS INTEGER)"
        if op.get_bind().dialect.name == "sqlite"
        else "CAST(CAST(j.summary AS jsonb) ->> 'best_epoch' AS INTEGER)"
    )
    epochs = {
        "best": best_epoch,
        "last": "(SELECT max(l.epoch) FROM epoch_metrics l WHERE l.job_id = e.job_id)",
    }
    for scope, epoch in epochs.items():
        op.execute(
            "INSERT INTO job_metrics (job_id, project_id, split, name, value) "
            f"SELECT e.job_id, j.project_id, '{scope}.' || e.split, e.name, e.value "
            "FROM epoch_metrics e JOIN jobs j ON j.id = e.job_id "
            f"WHERE j.status = 'succeeded' AND e.value IS NOT NULL AND e.epoch = {epoch}"
        )


def upgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project_id", sa.String(length=32), nullable=True))
    op.execute(
        "UPDATE job_metrics SET project_id = (SELECT jobs.project_id FROM jobs WHERE jobs.id = job_metrics.job_id)"
    )
    op.execute("DELETE FROM job_metrics WHERE value IS NULL OR project_id IS NULL")
    _backfill_epoch_values()
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.alter_column("project_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_index("ix_job_metrics_split_name_value")
        batch_op.create_index(
            "ix_job_metrics_project_split_name_value", ["project_id", "split", "name", "value", "job_id"], unique=False
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_project_created")
        for name, columns in JOB_SORT_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in JOB_SORT_INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index("ix_jobs_project_created", ["project_id", "created_at"], unique=False)
    op.execute("DELETE FROM job_metrics WHERE split LIKE 'best.%' OR split LIKE 'last.%'")
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_job_metrics_project_split_name_value")
        batch_op.drop_column("project_id")
        batch_op.create_index("ix_job_metrics_split_name_value", ["split", "name", "value"], unique=False)
