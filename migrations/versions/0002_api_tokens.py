"""Bearer tokens (api_tokens) and experiment owners.

Experiments that existed before tokens did belong to the owner 'local' (the owner of the admin
token that `groklab up` creates).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)  # service.contract.models.UTCDateTime's storage type


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.CheckConstraint("scope IN ('read', 'write', 'admin')", name="ck_api_tokens_scope"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(
            sa.Column("owner", sa.String(length=200), nullable=False, server_default="local")
        )
    op.create_index("ix_experiments_owner_created", "experiments", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_experiments_owner_created", table_name="experiments")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("owner")
    op.drop_table("api_tokens")
