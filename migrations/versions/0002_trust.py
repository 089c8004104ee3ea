"""Trust: a webhook secret per tenant, when each API key was last used, and tenant uploads.

Existing tenants get a fresh random secret (PostgreSQL's gen_random_uuid draws on its strong
random source); nobody has seen it, so they rotate it (POST /v1/webhook-secret) to learn one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE tenants SET webhook_secret = "
        "replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"
    )
    op.alter_column("tenants", "webhook_secret", nullable=False)
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("files", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('model', 'calibration')", name="uploads_kind_valid"),
        sa.CheckConstraint("status IN ('pending', 'complete')", name="uploads_status_valid"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("uploads_tenant", "uploads", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("uploads_tenant", table_name="uploads")
    op.drop_table("uploads")
    op.drop_column("api_keys", "last_used_at")
    op.drop_column("tenants", "webhook_secret")
