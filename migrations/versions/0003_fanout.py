"""Fan-out: a job's parallelism and plan, its work items (leased like jobs), and the candidate
scores as they come.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("parallelism", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column("jobs", sa.Column("plan", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_table(
        "work_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("share", sa.Integer(), nullable=False),
        sa.Column("candidates", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_token", sa.String(length=36), nullable=True),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('score', 'export')", name="work_items_kind_valid"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'cancelled')", name="work_items_status_valid"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "kind", "iteration", "share", name="work_items_once"),
    )
    op.create_index("work_items_job", "work_items", ["job_id", "iteration"])
    op.create_table(
        "candidate_scores",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("block", sa.String(length=3), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ppl", sa.Float(precision=53), nullable=False),
        sa.Column("times_scored", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "iteration", "block", "layer"),
    )


def downgrade() -> None:
    op.drop_table("candidate_scores")
    op.drop_index("work_items_job", table_name="work_items")
    op.drop_table("work_items")
    op.drop_column("jobs", "plan")
    op.drop_column("jobs", "parallelism")
