"""The racing search over workers: an iteration's work items and scores come in stages (each
stage's survivors scored on the next slice of the calibration sequences), and a score keeps
each sequence's NLL, which the cut between stages is decided on.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "work_items", sa.Column("stage", sa.Integer(), nullable=False, server_default="1")
    )
    op.drop_constraint("work_items_once", "work_items", type_="unique")
    op.create_unique_constraint(
        "work_items_once", "work_items", ["job_id", "kind", "iteration", "stage", "share"]
    )
    op.add_column(
        "candidate_scores", sa.Column("stage", sa.Integer(), nullable=False, server_default="1")
    )
    op.add_column("candidate_scores", sa.Column("nlls", postgresql.JSONB(), nullable=True))
    op.drop_constraint("candidate_scores_pkey", "candidate_scores", type_="primary")
    op.create_primary_key(
        "candidate_scores_pkey",
        "candidate_scores",
        ["job_id", "iteration", "stage", "block", "layer"],
    )


def downgrade() -> None:
    op.execute("DELETE FROM candidate_scores WHERE stage > 1")
    op.execute("DELETE FROM work_items WHERE stage > 1")
    op.drop_constraint("candidate_scores_pkey", "candidate_scores", type_="primary")
    op.create_primary_key(
        "candidate_scores_pkey", "candidate_scores", ["job_id", "iteration", "block", "layer"]
    )
    op.drop_column("candidate_scores", "nlls")
    op.drop_column("candidate_scores", "stage")
    op.drop_constraint("work_items_once", "work_items", type_="unique")
    op.create_unique_constraint(
        "work_items_once", "work_items", ["job_id", "kind", "iteration", "share"]
    )
    op.drop_column("work_items", "stage")
