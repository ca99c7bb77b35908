"""Fair order on the analysis queue: which waiting analysis a woken worker takes next.

Analyses on request are of two kinds, a checkpoint's analyses (analysis_cache rows: the Fourier
measures, or the circuit pictures, by their cache kind) and
an experiment's progress measures (progress_measures rows); each request that is marked pending
sends one queue message. As with training jobs, the message only wakes a worker: it takes the
pending analysis of the owner with the fewest analyses running, then the oldest request, and
claims it with a compare-and-swap (pending -> running), so one owner's many requests never keep
another owner's one waiting behind them all. Every claim uses up one message and every pending
request has one, so each is taken once.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, literal, select, union_all, update
from sqlalchemy.orm import Session

from service.contract.models import (
    ANALYSIS_PENDING,
    ANALYSIS_RUNNING,
    PROGRESS_PENDING,
    PROGRESS_RUNNING,
    AnalysisCache,
    Experiment,
    ProgressMeasures,
)

CHECKPOINT = "checkpoint"  # a checkpoint's Fourier measures (analysis_cache)
MEASURES = "progress-measures"  # an experiment's progress measures (progress_measures)


@dataclass(frozen=True)
class AnalysisPick:
    """A waiting analysis: its kind, experiment, step (the checkpoint's, or final_step) and when
    it was asked for (what the claim compares)."""

    kind: str
    experiment_id: str
    step: int
    requested_at: object
    cache_kind: str = "fourier"  # a checkpoint analysis's kind (analysis_cache.kind)


def _requests(pending: bool):
    """Every pending (else running) analysis: kind, experiment, step, requested, owner."""
    checkpoints = (
        select(literal(CHECKPOINT).label("kind"), AnalysisCache.experiment_id.label("eid"),
               AnalysisCache.step.label("step"), AnalysisCache.created_at.label("requested"),
               Experiment.owner.label("owner"), AnalysisCache.kind.label("cache_kind"))
        .join(Experiment, Experiment.id == AnalysisCache.experiment_id)
        .where(AnalysisCache.status == (ANALYSIS_PENDING if pending else ANALYSIS_RUNNING))
    )
    measures = (
        select(literal(MEASURES).label("kind"), ProgressMeasures.experiment_id.label("eid"),
               ProgressMeasures.final_step.label("step"),
               ProgressMeasures.requested_at.label("requested"), Experiment.owner.label("owner"),
               literal("").label("cache_kind"))
        .join(Experiment, Experiment.id == ProgressMeasures.experiment_id)
        .where(ProgressMeasures.status == (PROGRESS_PENDING if pending else PROGRESS_RUNNING))
    )
    return union_all(checkpoints, measures).subquery()


def next_fair_analysis(session: Session) -> AnalysisPick | None:
    """The pending analysis a woken worker should take: the owner with the fewest running
    first, then the oldest request; None when none is pending."""
    waiting, running = _requests(pending=True), _requests(pending=False)
    busy = (select(running.c.owner, func.count().label("n"))
            .group_by(running.c.owner).subquery())
    row = session.execute(
        select(waiting.c.kind, waiting.c.eid, waiting.c.step, waiting.c.requested,
               waiting.c.cache_kind)
        .outerjoin(busy, busy.c.owner == waiting.c.owner)
        .order_by(func.coalesce(busy.c.n, 0), waiting.c.requested, waiting.c.eid, waiting.c.step,
                  waiting.c.cache_kind)
        .limit(1)
    ).first()
    session.commit()
    return None if row is None else AnalysisPick(row.kind, row.eid, row.step, row.requested,
                                                 row.cache_kind)


def claim_analysis(session: Session, pick: AnalysisPick) -> bool:
    """Take the picked analysis (pending -> running, while it is still the same request);
    False when another worker took it first, or it was withdrawn or asked again."""
    if pick.kind == CHECKPOINT:
        statement = update(AnalysisCache).where(
            AnalysisCache.experiment_id == pick.experiment_id, AnalysisCache.step == pick.step,
            AnalysisCache.kind == pick.cache_kind, AnalysisCache.status == ANALYSIS_PENDING,
            AnalysisCache.created_at == pick.requested_at,
        ).values(status=ANALYSIS_RUNNING)
    else:
        statement = update(ProgressMeasures).where(
            ProgressMeasures.experiment_id == pick.experiment_id,
            ProgressMeasures.final_step == pick.step,
            ProgressMeasures.status == PROGRESS_PENDING,
            ProgressMeasures.requested_at == pick.requested_at,
        ).values(status=PROGRESS_RUNNING)
    taken = session.execute(statement.execution_options(synchronize_session=False)).rowcount
    session.commit()
    return taken == 1
