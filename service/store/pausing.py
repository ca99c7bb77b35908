"""Pause and resume. A paused job is checkpointed and off its worker; it keeps its place (its
age in the fair order) and, resumed, is queued again and continues from that checkpoint.

    queued  --pause-->  paused            at once (no worker holds it)
    running --pause-->  pause_requested   its worker checkpoints it and marks it paused
                                          (worker side: service.store.jobs.pause_member)
    paused  --resume--> queued            the caller enqueues its job again
    running, pause_requested --resume-->  running (the request is withdrawn)

Every change is a compare-and-swap on (status, attempt). A finished job can be neither paused
nor resumed (NotPausable, which the API answers with 409). A sweep is paused and resumed member
by member in one UPDATE each way (pause_sweep, resume_sweep).
"""
from __future__ import annotations

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from service.contract.models import FINISHED_STATUSES, PAUSED, QUEUED, RUNNING, Experiment
from service.store.experiments import get_experiment

CAS_TRIES = 5  # a claim may slip in between the read and the CAS: read again


class NotPausable(Exception):
    """The job is in a state the request does not apply to (finished, or not paused)."""

    def __init__(self, experiment: Experiment, action: str) -> None:
        self.status = experiment.status
        super().__init__(
            f"experiment {experiment.id} is {experiment.status}: only a queued or running job "
            "can be paused" if action == "pause" else
            f"experiment {experiment.id} is {experiment.status}: only a paused job (or a running "
            "one whose pause was requested) can be resumed"
        )


def _swap(session: Session, experiment: Experiment, **values) -> bool:
    result = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment.id, Experiment.status == experiment.status,
               Experiment.attempt == experiment.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def request_pause(session: Session, experiment_id: str) -> Experiment | None:
    """Pause a job (see the module doc); a paused job stays paused. None for an unknown id;
    NotPausable for a finished one."""
    for _ in range(CAS_TRIES):
        experiment = get_experiment(session, experiment_id)
        if experiment is None or experiment.status == PAUSED:
            return experiment
        if experiment.status in FINISHED_STATUSES:
            raise NotPausable(experiment, "pause")
        if experiment.status == QUEUED:
            values = {"status": PAUSED, "steps_per_s": None, "eta_s": None}
        else:
            values = {"pause_requested": True}
        if _swap(session, experiment, **values):
            return get_experiment(session, experiment.id)
    raise RuntimeError(f"experiment {experiment_id} kept changing state while pausing")


def request_resume(session: Session, experiment_id: str) -> tuple[Experiment | None, bool]:
    """Resume a job: (the job, whether it was queued again and so needs a queue message).
    None for an unknown id; NotPausable unless it is paused or its pause was requested."""
    for _ in range(CAS_TRIES):
        experiment = get_experiment(session, experiment_id)
        if experiment is None:
            return None, False
        if experiment.status == RUNNING and experiment.pause_requested:
            if _swap(session, experiment, pause_requested=False):
                return get_experiment(session, experiment.id), False
            continue
        if experiment.status != PAUSED:
            raise NotPausable(experiment, "resume")
        if _swap(session, experiment, status=QUEUED, pause_requested=False):
            return get_experiment(session, experiment.id), True
    raise RuntimeError(f"experiment {experiment_id} kept changing state while resuming")


def resume_paused(session: Session, experiment_id: str) -> Experiment | None:
    """Queue a paused job again in one compare-and-swap UPDATE (no read before it, so that it
    can run in the transaction of the quota that admitted it); None unless it was paused."""
    found = session.execute(
        update(Experiment)
        .where(Experiment.id == str(experiment_id), Experiment.status == PAUSED)
        .values(status=QUEUED, pause_requested=False)
        .returning(Experiment.id)
        .execution_options(synchronize_session=False)
    ).first()
    session.commit()
    return get_experiment(session, experiment_id) if found is not None else None


# ---- a sweep: every member at once -----------------------------------------------------------


def pause_sweep(session: Session, sweep_id: str) -> int:
    """Pause every member that has not finished; returns how many were changed.

    One UPDATE, like cancel_sweep: queued members become 'paused' at once, running ones get
    pause_requested (their pack's worker checkpoints them and marks them paused). Each row's new
    values are chosen by its status at the moment it is written, so a member claimed while the
    statement runs is still paused one way or the other."""
    is_queued = Experiment.status == QUEUED
    result = session.execute(
        update(Experiment)
        .where(Experiment.sweep_id == str(sweep_id), Experiment.status.in_([QUEUED, RUNNING]),
               ~(Experiment.pause_requested.is_(True) & (Experiment.status == RUNNING)))
        .values(
            status=case((is_queued, PAUSED), else_=Experiment.status),
            steps_per_s=case((is_queued, None), else_=Experiment.steps_per_s),
            eta_s=case((is_queued, None), else_=Experiment.eta_s),
            pause_requested=case((is_queued, False), else_=True),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount


def sweep_resumable(session: Session, sweep_id: str) -> tuple[int, int]:
    """(paused members, running members whose pause was requested): what resume_sweep would
    queue again, and what it would only withdraw the request of."""
    rows = session.execute(
        select(Experiment.status, func.count())
        .where(Experiment.sweep_id == str(sweep_id),
               (Experiment.status == PAUSED)
               | ((Experiment.status == RUNNING) & Experiment.pause_requested.is_(True)))
        .group_by(Experiment.status)
    ).all()
    session.commit()
    counts = dict(rows)
    return counts.get(PAUSED, 0), counts.get(RUNNING, 0)


def resume_sweep(session: Session, sweep_id: str) -> list[tuple[str, str]]:
    """Resume every member: paused ones are queued again, running ones have their pause request
    withdrawn (one UPDATE). Returns the (job id, queue) of each job that now has queued members,
    once each: the caller enqueues them (a pack's members share one job, its pack_id)."""
    is_paused = Experiment.status == PAUSED
    queued = session.execute(
        update(Experiment)
        .where(Experiment.sweep_id == str(sweep_id),
               is_paused | ((Experiment.status == RUNNING) & Experiment.pause_requested.is_(True)))
        .values(status=case((is_paused, QUEUED), else_=Experiment.status), pause_requested=False)
        .returning(Experiment.id, Experiment.pack_id, Experiment.queue, Experiment.status)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    jobs = {(pack_id or exp_id, queue) for exp_id, pack_id, queue, status in queued
            if status == QUEUED}
    return sorted(jobs)
