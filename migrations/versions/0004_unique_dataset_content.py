"""one dataset per project and content: unique (project_id, sha256, format)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:25:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_datasets_project_content", ["project_id", "sha256", "format"])


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_datasets_project_content", type_="unique")
