"""Grokking-aware early stopping: a sweep member may end 'pruned' (a final state), and a running
experiment carries the worker's latest forecast.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-20
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BEFORE = ("queued", "running", "succeeded", "failed", "cancelled", "paused")
AFTER = (*BEFORE, "pruned")


def _status_check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("forecast", sa.JSON(), nullable=True))
        batch.drop_constraint("ck_experiments_status", type_="check")
        batch.create_check_constraint("ck_experiments_status", _status_check(AFTER))


def downgrade() -> None:
    op.execute("UPDATE experiments SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint("ck_experiments_status", type_="check")
        batch.create_check_constraint("ck_experiments_status", _status_check(BEFORE))
        batch.drop_column("forecast")
