"""Pause and resume: a job may be 'paused' (checkpointed, off its worker, keeping its place), and
a running one carries pause_requested until its worker has checkpointed it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BEFORE = ("queued", "running", "succeeded", "failed", "cancelled")
AFTER = (*BEFORE, "paused")


def _status_check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("pause_requested", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.drop_constraint("ck_experiments_status", type_="check")
        batch.create_check_constraint("ck_experiments_status", _status_check(AFTER))


def downgrade() -> None:
    op.execute("UPDATE experiments SET status = 'queued' WHERE status = 'paused'")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint("ck_experiments_status", type_="check")
        batch.create_check_constraint("ck_experiments_status", _status_check(BEFORE))
        batch.drop_column("pause_requested")
