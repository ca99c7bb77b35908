"""Sweeps: a grid of experiments stored in one transaction, and their status derived from the
members.

A sweep row holds only what the request said (name, owner, spec, sizes). Its status, counts,
progress and finish time are read from its members in one GROUP BY, never stored twice, so a
worker finishing a member never has to touch the sweep. Every member is an ordinary experiment
with sweep_id, sweep_index (its place in the grid), sweep_point (its axis values) and pack_id
(the queue job that trains it with the other members of its pack).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, insert, literal, select, update
from sqlalchemy.orm import Session

from service.contract.models import (
    CANCELLED,
    FAILED,
    FINISHED_STATUSES,
    PAUSED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    Experiment,
    Sweep,
    utcnow,
)
from service.contract.spec import ExperimentSpec
from service.science.sweeps import Member, SweepSpec
from service.store.experiments import newest_first_page

Job = tuple[str, str]  # (pack id, queue): one message on the queue


def create_sweep(
    session: Session,
    sweep_spec: SweepSpec,
    packs: list[list[Member]],
    queue_of: Callable[[ExperimentSpec], str],
    owner: str,
) -> tuple[Sweep, list[Experiment], list[Job]]:
    """Store a sweep and every member of its packs, all queued, in one transaction (one bulk
    INSERT for the members). Returns the sweep, its members by sweep_index (built from the rows
    inserted, not read back), and the (pack id, queue) of each pack, to enqueue once this has
    committed.

    Packs are claimed in the order given. Every member of a pack gets the pack's queue, queue_of(first member's spec): the members of
    a pack share their device, so they share a queue."""
    now = utcnow()
    sweep = Sweep(
        id=str(uuid.uuid4()),
        name=sweep_spec.name,
        owner=owner,
        spec=sweep_spec.model_dump(mode="json"),
        n_members=sum(len(pack) for pack in packs),
        n_packs=len(packs),
        created_at=now,
    )
    rows: list[dict[str, Any]] = []
    jobs: list[Job] = []
    for order, pack in enumerate(packs):
        pack_id, queue = str(uuid.uuid4()), queue_of(pack[0].spec)
        # The fair order takes one owner's jobs oldest first: a microsecond apart, the packs
        # are claimed in the order given (plan_packs: largest first), not by their random ids.
        created = now + timedelta(microseconds=order)
        jobs.append((pack_id, queue))
        rows += [
            {
                "id": str(uuid.uuid4()),
                "name": member.spec.name,
                "owner": owner,
                "status": QUEUED,
                "spec": member.spec.model_dump(mode="json"),
                "queue": queue,
                "step": 0,
                "total_steps": member.spec.training.steps,
                "created_at": created,
                "attempt": 0,
                "max_attempts": 3,
                "cancel_requested": False,
                "sweep_id": sweep.id,
                "sweep_index": member.index,
                "sweep_point": member.point,
                "pack_id": pack_id,
            }
            for member in pack
        ]
    rows.sort(key=lambda row: row["sweep_index"])
    session.add(sweep)
    session.flush()
    session.execute(insert(Experiment), rows)
    session.commit()
    return sweep, [Experiment(**row) for row in rows], jobs


def get_sweep(session: Session, sweep_id: str) -> Sweep | None:
    sweep = session.get(Sweep, str(sweep_id), populate_existing=True)
    session.commit()
    return sweep


def list_sweeps(
    session: Session, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
) -> tuple[list[Sweep], str | None]:
    """A page of sweeps (an owner's, or everyone's), newest first, and the next page's cursor.
    Raises ValueError on a malformed cursor."""
    query = select(Sweep)
    if owner is not None:
        query = query.where(Sweep.owner == owner)
    return newest_first_page(session, query, Sweep, limit, cursor)


def sweep_members(session: Session, sweep_id: str) -> list[Experiment]:
    """The sweep's member experiments, by sweep_index (grid order)."""
    members = list(session.scalars(
        select(Experiment)
        .where(Experiment.sweep_id == str(sweep_id))
        .order_by(Experiment.sweep_index)
        .execution_options(populate_existing=True)
    ))
    session.commit()
    return members


def sweep_member_ids(session: Session, sweep_id: str) -> list[str]:
    """The ids of the sweep's members, by sweep_index (without reading their rows)."""
    ids = list(session.scalars(
        select(Experiment.id)
        .where(Experiment.sweep_id == str(sweep_id))
        .order_by(Experiment.sweep_index)
    ))
    session.commit()
    return ids


@dataclass
class SweepStatus:
    """A sweep's state, derived from its members."""

    status: str
    counts: dict[str, int] = field(default_factory=dict)
    progress: float = 0.0
    finished_at: datetime | None = None


def derive_status(counts: dict[str, int], started: int) -> str:
    """The sweep's status from its members' counts by status and how many have started:
    any queued or running: 'running' once a member started or finished, else 'queued'; none
    queued or running but some paused: 'paused'; all finished: 'succeeded' if all succeeded,
    'failed' if any failed (partly failed is failed), else 'cancelled'."""
    finished = sum(counts.get(s, 0) for s in FINISHED_STATUSES)
    if counts.get(QUEUED, 0) or counts.get(RUNNING, 0):
        return RUNNING if started or finished else QUEUED
    if counts.get(PAUSED, 0):
        return PAUSED
    if counts.get(FAILED, 0):
        return FAILED
    if counts.get(CANCELLED, 0):
        return CANCELLED
    return SUCCEEDED


def sweep_statuses(session: Session, sweep_ids: list[str]) -> dict[str, SweepStatus]:
    """{sweep id: its status} for these sweeps, from one GROUP BY over their members.

    progress is the members' steps over their total steps, a finished member counting as done
    whatever step it stopped at (stop_on_grok, failure, cancel): 1.0 once every member has
    finished. finished_at is the last member's finish, once all have finished."""
    rows = session.execute(
        select(
            Experiment.sweep_id,
            Experiment.status,
            func.count(),
            func.sum(case((Experiment.step < Experiment.total_steps, Experiment.step),
                          else_=Experiment.total_steps)),
            func.sum(Experiment.total_steps),
            func.count(Experiment.started_at),
            func.max(Experiment.finished_at),
        )
        .where(Experiment.sweep_id.in_([str(i) for i in sweep_ids]))
        .group_by(Experiment.sweep_id, Experiment.status)
    ).all()
    session.commit()
    grouped: dict[str, list[tuple]] = {}
    for sweep_id, *rest in rows:
        grouped.setdefault(sweep_id, []).append(tuple(rest))
    return {str(i): _status_of(grouped.get(str(i), [])) for i in sweep_ids}


def _status_of(groups: list[tuple]) -> SweepStatus:
    counts = dict.fromkeys(STATUSES, 0)
    done = total = started = 0
    finished_at = None
    for status, n, steps, total_steps, n_started, last_finish in groups:
        counts[status] = n
        total += total_steps or 0
        done += (total_steps if status in FINISHED_STATUSES else steps) or 0
        started += n_started
        if last_finish is not None and status in FINISHED_STATUSES:
            finished_at = last_finish if finished_at is None else max(finished_at, last_finish)
    status = derive_status(counts, started)
    return SweepStatus(
        status=status,
        counts=counts,
        progress=done / total if total else 0.0,
        finished_at=finished_at if status in FINISHED_STATUSES else None,
    )


def sweep_status(session: Session, sweep: Sweep) -> SweepStatus:
    """The sweep's status, counts by member status, progress and finish time (one query)."""
    return sweep_statuses(session, [sweep.id])[sweep.id]


def cancel_sweep(session: Session, sweep_id: str) -> int:
    """Cancel every member that has not finished; returns how many were changed.

    One UPDATE: queued and paused members become 'cancelled' at once; running ones get
    cancel_requested (their pack's worker drops them, finishing each 'cancelled'). The new
    status is chosen by each row's status at the moment it is written, so a member claimed or
    requeued while the statement runs is still cancelled one way or the other: no member
    escapes between a read and a write."""
    is_idle = Experiment.status.in_([QUEUED, PAUSED])
    result = session.execute(
        update(Experiment)
        .where(Experiment.sweep_id == str(sweep_id),
               Experiment.status.in_([QUEUED, RUNNING, PAUSED]))
        .values(
            status=case((is_idle, CANCELLED), else_=Experiment.status),
            finished_at=case((is_idle, literal(utcnow(), Experiment.finished_at.type)),
                             else_=Experiment.finished_at),
            cancel_requested=True,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount
