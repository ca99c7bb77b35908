"""What an owner uses now, as the submit quotas count it: active jobs and recent submissions;
and the owner's lock, which makes a quota's count and the insert it admits one step.

Counted in the database (the source of truth), so that the quotas hold across several API
processes. The stored checkpoint bytes are counted with the checkpoints
(checkpoints.owner_checkpoint_bytes). These reads do not commit: inside owner_lock they are part
of the transaction that inserts what they admitted.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.contract.models import QUEUED, RUNNING, Experiment, Sweep
from service.store.dialect import is_postgresql


def owner_lock_key(owner: str) -> int:
    """The owner's advisory-lock key: a signed 64-bit hash of its name."""
    digest = hashlib.sha256(f"groklab:quota:{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def owner_lock(session: Session, owner: str) -> Iterator[None]:
    """A transaction that holds the owner's lock from its start to its commit: PostgreSQL's
    pg_advisory_xact_lock on owner_lock_key(owner) (other owners go on), SQLite's BEGIN
    IMMEDIATE (the one writer at a time). Two submissions of one owner therefore count and
    insert one after the other, never both on the same count. The block commits what it wrote
    (create_experiment, create_sweep); nothing in it may commit before that. Rolled back when
    the block raises."""
    session.commit()  # start afresh: the lock must come first in its transaction
    if is_postgresql(session):
        session.execute(select(func.pg_advisory_xact_lock(owner_lock_key(owner))))
    else:
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        session.rollback()
        raise
    session.commit()


def active_jobs(session: Session, owner: str) -> int:
    """The owner's queued and running experiments (each sweep member counts one)."""
    n = session.scalar(
        select(func.count()).select_from(Experiment)
        .where(Experiment.owner == owner, Experiment.status.in_((QUEUED, RUNNING)))
    )
    return int(n or 0)


def submission_times(session: Session, owner: str, since: datetime) -> list[datetime]:
    """When the owner submitted since `since`: each single experiment and each sweep once (a
    sweep's members are not submissions of their own)."""
    singles = select(Experiment.created_at).where(
        Experiment.owner == owner, Experiment.sweep_id.is_(None), Experiment.created_at >= since)
    sweeps = select(Sweep.created_at).where(Sweep.owner == owner, Sweep.created_at >= since)
    return [*session.scalars(singles), *session.scalars(sweeps)]
