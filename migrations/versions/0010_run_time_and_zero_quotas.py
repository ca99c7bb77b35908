"""A job's running time over all its attempts (experiments.run_s, added by each heartbeat), which
its time limit counts; a token's quota override of 0 now allows none, so overrides stored as 0
(which meant no limit) become unset (the setting applies); and an analysis a worker took is
'running' (workers take them in fair order across owners).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OVERRIDES = ("max_active_jobs", "submissions_per_minute", "max_compute")


ANALYSIS_TABLES = {"analysis_cache": "ck_analysis_cache_status",
                   "progress_measures": "ck_progress_measures_status"}


def _statuses(*statuses: str) -> str:
    return "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")"


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("run_s", sa.Float(), nullable=False, server_default="0"))
    for column in OVERRIDES:
        op.execute(f"UPDATE api_tokens SET {column} = NULL WHERE {column} = 0")
    for table, check in ANALYSIS_TABLES.items():  # 'running': a worker took it in fair order
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(check, type_="check")
            batch.create_check_constraint(check, _statuses("pending", "running", "done", "failed"))


def downgrade() -> None:
    for table, check in ANALYSIS_TABLES.items():
        op.execute(f"UPDATE {table} SET status = 'pending' WHERE status = 'running'")
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(check, type_="check")
            batch.create_check_constraint(check, _statuses("pending", "done", "failed"))
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("run_s")
