"""Typed dependencies: a route's signature says what it needs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from service import store
from service.models import Experiment
from service.settings import Settings


def get_app_settings(request: Request) -> Settings:
    """The settings this app was created with (create_app(settings))."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_enqueue() -> Callable[[str, str], None]:
    """worker.celery_app.enqueue_experiment, imported on first use (it builds the Celery app)."""
    from worker.celery_app import enqueue_experiment

    return enqueue_experiment


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Callable[[str, str], None], Depends(get_enqueue)]


def get_experiment_or_404(
    experiment_id: Annotated[UUID, Path(description="The experiment's id (a UUID).")],
    session: SessionDep,
) -> Experiment:
    experiment = store.get_experiment(session, str(experiment_id))
    if experiment is None:
        raise HTTPException(status_code=404, detail=f"experiment {experiment_id} not found")
    return experiment


ExperimentDep = Annotated[Experiment, Depends(get_experiment_or_404)]


def invalid(loc: tuple[str, ...], msg: str, value: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (detail: [{loc, msg, type, input}])."""
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": list(loc), "msg": msg, "input": value}],
    )
