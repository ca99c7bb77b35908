"""The tables (SQLAlchemy 2, `Mapped[...]`). Storage only: the API schemas live in schemas.py.

Every timestamp is timezone-aware UTC, on PostgreSQL and on SQLite alike (see UTCDateTime).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    false,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
# Checkpointed and off its worker, keeping its place until resumed (then queued again).
PAUSED = "paused"
# Stopped early by its sweep's pruner (service/science/pruning.py): final, keeping its metrics
# and checkpoints, with the rule's reason and score in its summary.
PRUNED = "pruned"
STATUSES: tuple[str, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, PAUSED, PRUNED)
FINISHED_STATUSES: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED, PRUNED})

# Token scopes, each including the ones before it: admin ⊇ write ⊇ read.
SCOPES: tuple[str, ...] = ("read", "write", "admin")
# Owner of the experiments that existed before tokens did, and of `groklab up`'s admin token.
LOCAL_OWNER = "local"

# Metric rollups: one row per (series, level, bucket), where a level-L bucket holds the steps
# [bucket * 2**L, (bucket + 1) * 2**L). A query that needs level L reads level L itself (one row
# per bucket) up to level 10; beyond, it reads level 10 and merges, steps / 1024 rows per series
# (under 1000 for the default GROKLAB_MAX_STEPS). Below 16 steps per bucket the raw points are
# cheap enough to read. Each stored level costs ingestion time. Changing this tuple needs a data
# migration that rebuilds metric_rollups from metrics.
ROLLUP_LEVELS: tuple[int, ...] = (4, 5, 6, 7, 8, 9, 10)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so the value is converted to UTC
    and stored naive, and read back with UTC attached. Naive datetimes are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name="ck_experiments_status",
        ),
        # Newest-first keyset pagination, alone or filtered by status or name.
        Index("ix_experiments_created", "created_at", "id"),
        Index("ix_experiments_status_created", "status", "created_at", "id"),
        Index("ix_experiments_name_created", "name", "created_at", "id"),
        # A non-admin token lists only its owner's jobs.
        Index("ix_experiments_owner_created", "owner", "created_at", "id"),
        # A sweep's members, and a pack's.
        Index("ix_experiments_sweep", "sweep_id", "sweep_index"),
        Index("ix_experiments_pack", "pack_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), server_default=LOCAL_OWNER)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(64))

    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    steps_per_s: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]

    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Seconds the job has run, over every attempt (added by each heartbeat): its time limit
    # counts this, so a job requeued after a lost worker does not start its limit afresh.
    run_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    summary: Mapped[dict[str, Any] | None]
    # The worker's latest forecast of whether and when it generalises (modular tasks, after
    # memorisation; service/science/pruning.py): what a sweep's grokking-aware pruner acts on.
    forecast: Mapped[dict[str, Any] | None]

    # Sweep members: the sweep, the member's place in the grid and its axis values, and the pack
    # it trains in. A pack is the unit of work: its id is the job id on the queue, and its
    # members are claimed, beat and resumed together (see service.store.jobs).
    sweep_id: Mapped[str | None] = mapped_column(String(36))
    sweep_index: Mapped[int | None] = mapped_column(Integer)
    sweep_point: Mapped[dict[str, Any] | None]
    pack_id: Mapped[str | None] = mapped_column(String(36))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def job_id(self) -> str:
        """The id its queue message carries: its pack's, or its own."""
        return self.pack_id or self.id


class Sweep(Base):
    """A grid over spec paths; each point is an ordinary experiment (Experiment.sweep_id). Its
    status, counts and progress are derived from its members, never stored twice."""

    __tablename__ = "sweeps"
    __table_args__ = (
        Index("ix_sweeps_created", "created_at", "id"),
        Index("ix_sweeps_owner_created", "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200))
    # The request as given: {"name", "base", "grid", "pack_size"}; grid keeps the axis order.
    spec: Mapped[dict[str, Any]]
    n_members: Mapped[int] = mapped_column(Integer)
    n_packs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token. Only the sha256 of the secret is stored: the secret is shown once, when
    the token is created, and cannot be recovered from the database."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("scope IN ('read', 'write', 'admin')", name="ck_api_tokens_scope"),
        UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # Per-token overrides of the owner quotas; None means the setting (service/access/quotas.py).
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    submissions_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_compute: Mapped[float | None] = mapped_column(Float)


class WebhookSecret(Base):
    """The secret an owner's alert webhooks are signed with (HMAC-SHA256,
    service/contract/notify.py). Stored as is, unlike an API token's hash: the worker needs it to
    sign. It is printed once, by `groklab webhook-secret set`, and never served by the API."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One scalar of one ensemble member at one step. The primary key is the range-query index.

    No FOREIGN KEY to experiments on purpose: on PostgreSQL the per-row referential trigger
    halves ingestion speed. ingest_metrics checks the experiment once per batch instead.
    On SQLite the table is WITHOUT ROWID, so the primary key is the clustered layout.
    A NaN value is stored as NULL (SQLite cannot store NaN).
    """

    __tablename__ = "metrics"
    __table_args__ = {"sqlite_with_rowid": False}

    experiment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)


class MetricSeries(Base):
    """One row per series (experiment, name, member): its point count and its first and last
    points. Kept in step with `metrics` by ingest_metrics; lists the series of an experiment and
    answers the common whole-run query without probing the points."""

    __tablename__ = "metric_series"

    experiment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(Integer)
    first_value: Mapped[float | None] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(Integer)
    last_value: Mapped[float | None] = mapped_column(Float)


class MetricRollup(Base):
    """Per-bucket extremes of a series, kept in step with `metrics` by ingest_metrics.

    A derived index: level L, bucket b covers steps [b * 2**L, (b + 1) * 2**L). It lets the
    server answer a min/max-downsampled query in O(max_points) instead of reading every point.
    n counts the points in the bucket; min_*/max_* are the points with the smallest and largest
    value (earliest step on ties; NULL when the bucket has only NaN values). On PostgreSQL the
    migration gives it fillfactor 70 so that the updates of each batch stay heap-only.
    """

    __tablename__ = "metric_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    experiment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    member: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)
    min_step: Mapped[int | None] = mapped_column(Integer)
    min_value: Mapped[float | None] = mapped_column(Float)
    max_step: Mapped[int | None] = mapped_column(Integer)
    max_value: Mapped[float | None] = mapped_column(Float)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    experiment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    # SQLite's INTEGER holds 64 bits already.
    size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CheckpointChunk(Base):
    """The bytes of a checkpoint, split into chunks of CHECKPOINT_CHUNK_BYTES (the last one
    shorter), so that a download reads and sends one chunk at a time whatever the size.
    Written in the transaction that writes its checkpoint row; deleted with it."""

    __tablename__ = "checkpoint_chunks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["experiment_id", "step"], ["checkpoints.experiment_id", "checkpoints.step"],
            ondelete="CASCADE",
        ),
    )

    experiment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


CHECKPOINT_CHUNK_BYTES = 1 << 20

ANALYSIS_PENDING = "pending"
ANALYSIS_RUNNING = "running"
ANALYSIS_DONE = "done"
ANALYSIS_FAILED = "failed"


class AnalysisCache(Base):
    """An analysis of one checkpoint step, by kind: "fourier" (the Fourier measures), or a
    circuit picture (service/contract/circuit.py: "circuit", "embedding:0", "waves:0:top:0",
    ...). status: pending (queued for a worker; data NULL), running (a worker took it, in fair
    order), done (data holds them), failed (error says why; attempts counts the tries, retried
    on request while it is under
    GROKLAB_ANALYSIS_MAX_ATTEMPTS)."""

    __tablename__ = "analysis_cache"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')", name="ck_analysis_cache_status"
        ),
    )

    experiment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(100), primary_key=True, server_default="fourier")
    status: Mapped[str] = mapped_column(String(16), server_default=ANALYSIS_DONE)
    data: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


PROGRESS_PENDING = "pending"
PROGRESS_RUNNING = "running"
PROGRESS_DONE = "done"
PROGRESS_FAILED = "failed"


class ProgressMeasures(Base):
    """The progress measures of Nanda et al. 2023 recomputed at every stored checkpoint with the
    key frequencies fixed from the checkpoint at final_step: one row per experiment, written by
    a worker on request (GET .../progress-measures). status: pending (queued for a worker),
    running (a worker took it, in fair order), done (data holds the series and the key
    frequencies), failed (error says why)."""

    __tablename__ = "progress_measures"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')",
            name="ck_progress_measures_status",
        ),
    )

    experiment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16))
    final_step: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
