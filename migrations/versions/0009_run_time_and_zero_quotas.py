"""A job's running time over all its attempts (experiments.run_s, added by each heartbeat), which
its time limit counts; and a token's quota override of 0 now allows none, so overrides stored
as 0 (which meant no limit) become unset (the setting applies).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OVERRIDES = ("max_active_jobs", "submissions_per_minute", "max_compute")


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("run_s", sa.Float(), nullable=False, server_default="0"))
    for column in OVERRIDES:
        op.execute(f"UPDATE api_tokens SET {column} = NULL WHERE {column} = 0")


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("run_s")
