"""Checkpoint chunks: a checkpoint's bytes move from checkpoints.data into checkpoint_chunks
(1 MiB rows), so a download streams them a chunk at a time; checkpoints.size becomes a BIGINT.
The analysis cache gains a status (pending, done, failed), the failure's reason and the number
of attempts, so that checkpoint-analysis requests are deduplicated and failures cached.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CHUNK_BYTES = 1 << 20  # service.contract.models.CHECKPOINT_CHUNK_BYTES when this was written


def upgrade() -> None:
    op.create_table(
        "checkpoint_chunks",
        sa.Column("experiment_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id", "step"], ["checkpoints.experiment_id", "checkpoints.step"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "step", "seq"),
    )
    connection = op.get_bind()
    # One checkpoint in memory at a time, whatever the table holds.
    keys = connection.execute(sa.text("SELECT experiment_id, step FROM checkpoints")).all()
    for experiment_id, step in keys:
        blob = bytes(connection.execute(
            sa.text("SELECT data FROM checkpoints WHERE experiment_id = :e AND step = :s"),
            {"e": experiment_id, "s": step},
        ).scalar_one())
        for seq, start in enumerate(range(0, max(len(blob), 1), CHUNK_BYTES)):
            connection.execute(
                sa.text("INSERT INTO checkpoint_chunks (experiment_id, step, seq, data) "
                        "VALUES (:e, :s, :q, :d)"),
                {"e": experiment_id, "s": step, "q": seq, "d": blob[start:start + CHUNK_BYTES]},
            )
    if connection.dialect.name == "sqlite":
        # SQLite's INTEGER already holds 64 bits; a batch rebuild of checkpoints would cascade
        # the DROP of the old table into checkpoint_chunks.
        op.execute("ALTER TABLE checkpoints DROP COLUMN data")
    else:
        op.drop_column("checkpoints", "data")
        op.alter_column("checkpoints", "size", type_=sa.BigInteger(), existing_nullable=False)

    with op.batch_alter_table("analysis_cache") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="done", nullable=False)
        )
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.alter_column("data", existing_type=sa.JSON(), nullable=True)
        batch.create_check_constraint(
            "ck_analysis_cache_status", "status IN ('pending', 'done', 'failed')"
        )
    # A failure used to be cached as data {"step", "error"}.
    rows = connection.execute(sa.text("SELECT experiment_id, step, data FROM analysis_cache"))
    for experiment_id, step, data in rows.all():
        document = json.loads(data) if isinstance(data, str) else data
        if isinstance(document, dict) and "error" in document:
            connection.execute(
                sa.text("UPDATE analysis_cache SET status = 'failed', error = :r, data = NULL, "
                        "attempts = 1 WHERE experiment_id = :e AND step = :s"),
                {"r": str(document["error"]), "e": experiment_id, "s": step},
            )


def downgrade() -> None:
    connection = op.get_bind()
    connection.execute(sa.text(
        "UPDATE analysis_cache SET data = '{\"error\": \"analysis not done\"}' "
        "WHERE data IS NULL"
    ))
    with op.batch_alter_table("analysis_cache") as batch:
        batch.drop_constraint("ck_analysis_cache_status", type_="check")
        batch.drop_column("attempts")
        batch.drop_column("error")
        batch.drop_column("status")
        batch.alter_column("data", existing_type=sa.JSON(), nullable=False)

    op.add_column("checkpoints", sa.Column("data", sa.LargeBinary(), nullable=True))
    keys = connection.execute(sa.text("SELECT experiment_id, step FROM checkpoints")).all()
    for experiment_id, step in keys:
        chunks = connection.execute(
            sa.text("SELECT data FROM checkpoint_chunks WHERE experiment_id = :e AND step = :s "
                    "ORDER BY seq"),
            {"e": experiment_id, "s": step},
        ).scalars()
        connection.execute(
            sa.text("UPDATE checkpoints SET data = :d WHERE experiment_id = :e AND step = :s"),
            {"d": b"".join(bytes(c) for c in chunks), "e": experiment_id, "s": step},
        )
    if connection.dialect.name != "sqlite":
        op.alter_column("checkpoints", "data", existing_type=sa.LargeBinary(), nullable=False)
        op.alter_column("checkpoints", "size", type_=sa.Integer(), existing_nullable=False)
    op.drop_table("checkpoint_chunks")
