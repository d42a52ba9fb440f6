"""jobs.not_before: a retry's pause is its own column, so a job waiting it out holds no in-flight place

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    # A job that waits out a retry's pause the old way (dispatched_at in the future) moves its pause
    # to the new column and waits in SQL instead of holding its queue's in-flight place.
    jobs = sa.table(
        "jobs",
        sa.column("status", sa.String),
        sa.column("dispatched_at", sa.DateTime(timezone=True)),
        sa.column("not_before", sa.DateTime(timezone=True)),
    )
    op.execute(
        jobs.update()
        .where(jobs.c.status == "queued", jobs.c.dispatched_at > sa.func.current_timestamp())
        .values(not_before=jobs.c.dispatched_at, dispatched_at=None)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("not_before")
