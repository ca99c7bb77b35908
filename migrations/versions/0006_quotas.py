"""Quotas: per-token overrides of the owner quotas (GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER and co.).

A NULL column means "use the setting".

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-11
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("max_active_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("submissions_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_compute", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("max_compute")
        batch.drop_column("submissions_per_minute")
        batch.drop_column("max_active_jobs")
