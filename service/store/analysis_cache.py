"""Cached analysis: the Fourier progress measures of an experiment, one JSON document per
checkpoint step, written by the worker and served by the API.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import AnalysisCache, utcnow
from service.store.dialect import upsert_insert


def get_cached_analysis(session: Session, experiment_id: str, step: int) -> dict | None:
    """The cached analysis of an experiment at a checkpoint step, or None."""
    data = session.scalar(
        select(AnalysisCache.data).where(
            AnalysisCache.experiment_id == str(experiment_id), AnalysisCache.step == step
        )
    )
    session.commit()
    return data


def latest_cached_analysis(session: Session, experiment_id: str) -> dict | None:
    """The cached analysis document with the highest step, or None when there is none."""
    data = session.scalar(
        select(AnalysisCache.data)
        .where(AnalysisCache.experiment_id == str(experiment_id))
        .order_by(AnalysisCache.step.desc())
        .limit(1)
    )
    session.commit()
    return data


def put_cached_analysis(session: Session, experiment_id: str, step: int, data: dict) -> None:
    """Store (or replace) the analysis of an experiment at a checkpoint step."""
    statement = upsert_insert(session, AnalysisCache).values(
        experiment_id=str(experiment_id), step=step, data=data, created_at=utcnow()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["experiment_id", "step"],
            set_={"data": statement.excluded.data, "created_at": statement.excluded.created_at},
        )
    )
    session.commit()
