"""drop jobs.release_requested: warm shutdown now uses a flag shared by the worker's processes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("release_requested")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("release_requested", sa.Boolean(), server_default=sa.false(), nullable=False))
