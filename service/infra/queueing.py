"""Which queue a job goes to, and the service's door to the workers: sending it there.

Tasks are sent by name (service.infra.celery_app), so the service never imports the worker's
code to enqueue. The Celery app is built on the first send, so that importing the service builds
no app (and creates no broker folder).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from service.infra import celery_app

if TYPE_CHECKING:
    from service.contract.spec import ExperimentSpec


def queue_for(spec: ExperimentSpec, default_queue: str) -> str:
    """'gpu' for a spec that asks for cuda; every other job goes to the default queue."""
    return "gpu" if spec.training.device == "cuda" else default_queue


def enqueue_experiment(experiment_id: str, queue: str) -> None:
    """Wake a worker on `queue` for this experiment. Safe to call twice (the claim is a CAS)."""
    celery_app.get_celery_app().send_task(
        celery_app.RUN_EXPERIMENT, args=[experiment_id], queue=queue
    )


def enqueue_checkpoint_analysis(
    experiment_id: str, step: int, queue: str = celery_app.ANALYSIS_QUEUE, kind: str = "fourier"
) -> None:
    """Ask a worker for one kind of analysis of one stored checkpoint (the Fourier measures,
    or the circuit pictures: service/contract/circuit.py); the result lands in the analysis
    cache."""
    celery_app.get_celery_app().send_task(
        celery_app.ANALYZE_CHECKPOINT, args=[experiment_id, step, kind], queue=queue
    )


def enqueue_progress_measures(experiment_id: str, final_step: int, queue: str) -> None:
    """Ask a worker for the progress measures at every checkpoint with the key frequencies of
    the one at final_step (the result lands in the progress_measures table)."""
    celery_app.get_celery_app().send_task(
        celery_app.PROGRESS_MEASURES, args=[experiment_id, final_step], queue=queue
    )
