"""A cancelled or failed job's prefix is swept of what its attempts uploaded (worker.sweep):
`jobs.export_swept_at` says it was, and a partial index finds the jobs still to sweep.

Jobs that ended before this revision are swept once too: the fault drill found leftovers there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("export_swept_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "jobs_to_sweep",
        "jobs",
        ["finished_at"],
        postgresql_where=sa.text("status IN ('cancelled', 'failed') AND export_swept_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("jobs_to_sweep", table_name="jobs")
    op.drop_column("jobs", "export_swept_at")
