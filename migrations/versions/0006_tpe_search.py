"""tpe search: sweep space, parallelism, objective, pruner, confirm seeds, ask counter; job trial number

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("space", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("parallelism", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("objective", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("pruner", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("startup_trials", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("confirm_seeds", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("random_seed", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("jobs_asked", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("stopped", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("trial_attrs", sa.JSON(), nullable=True))
        batch_op.create_unique_constraint("uq_jobs_sweep_trial", ["sweep_id", "trial_number"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_sweep_trial", type_="unique")
        batch_op.drop_column("trial_attrs")
        batch_op.drop_column("trial_number")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        for column in (
            "stopped",
            "jobs_asked",
            "random_seed",
            "confirm_seeds",
            "startup_trials",
            "pruner",
            "objective",
            "parallelism",
            "space",
        ):
            batch_op.drop_column(column)
