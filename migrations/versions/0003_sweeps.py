"""Sweeps: the sweeps table, and each experiment's sweep, grid point and pack.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)  # service.contract.models.UTCDateTime's storage type


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("n_members", sa.Integer(), nullable=False),
        sa.Column("n_packs", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sweeps_created", "sweeps", ["created_at", "id"])
    op.create_index("ix_sweeps_owner_created", "sweeps", ["owner", "created_at", "id"])
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("sweep_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("sweep_point", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("pack_id", sa.String(length=36), nullable=True))
    op.create_index("ix_experiments_sweep", "experiments", ["sweep_id", "sweep_index"])
    op.create_index("ix_experiments_pack", "experiments", ["pack_id"])


def downgrade() -> None:
    op.drop_index("ix_experiments_pack", table_name="experiments")
    op.drop_index("ix_experiments_sweep", table_name="experiments")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("pack_id")
        batch.drop_column("sweep_point")
        batch.drop_column("sweep_index")
        batch.drop_column("sweep_id")
    op.drop_index("ix_sweeps_owner_created", table_name="sweeps")
    op.drop_index("ix_sweeps_created", table_name="sweeps")
    op.drop_table("sweeps")
