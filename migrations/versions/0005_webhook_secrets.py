"""Webhook secrets: the per-owner secret that alert webhooks (a spec's notify) are signed with.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)  # service.contract.models.UTCDateTime's storage type


def upgrade() -> None:
    op.create_table(
        "webhook_secrets",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
