"""Analysis kinds: analysis_cache rows are keyed by (experiment, step, kind), so that a
checkpoint's circuit pictures (embedding clocks, neurons, waves, attention) are cached beside
its Fourier measures (kind 'fourier', which every existing row is).

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

# PostgreSQL's name for the primary key that 0001 created unnamed.
PG_PRIMARY_KEY = "analysis_cache_pkey"


def _kind(primary_key: bool) -> sa.Column:
    return sa.Column("kind", sa.String(length=100), nullable=False, server_default="fourier",
                     primary_key=primary_key)


def upgrade() -> None:
    with op.batch_alter_table("analysis_cache") as batch:
        batch.add_column(_kind(primary_key=False))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot alter a primary key: the batch copies the table (nothing references
        # it), with kind read as a key column, so that the key is the three columns.
        with op.batch_alter_table("analysis_cache", recreate="always",
                                  reflect_args=[_kind(primary_key=True)]):
            pass
    else:
        op.drop_constraint(PG_PRIMARY_KEY, "analysis_cache", type_="primary")
        op.create_primary_key(PG_PRIMARY_KEY, "analysis_cache", ["experiment_id", "step", "kind"])


def downgrade() -> None:
    op.execute("DELETE FROM analysis_cache WHERE kind <> 'fourier'")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(PG_PRIMARY_KEY, "analysis_cache", type_="primary")
        op.create_primary_key(PG_PRIMARY_KEY, "analysis_cache", ["experiment_id", "step"])
    with op.batch_alter_table("analysis_cache") as batch:  # SQLite: the copy keys the other two
        batch.drop_column("kind")
