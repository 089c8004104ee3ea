"""A job's evaluation report (contract.evaluation, core.evaluation.run): measured before and
after pruning when the job asks for it, shown under `evaluation` in the API.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("evaluation", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "evaluation")
