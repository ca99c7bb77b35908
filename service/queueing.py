"""Which queue a job goes to, and the service's only door to worker/: sending it there.

worker.celery_app is imported inside the enqueue functions, on first use, so that importing
the service builds no Celery app (and creates no broker folder).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.spec import ExperimentSpec

QUEUES = ("gpu", "cpu", "analysis")
# On-demand checkpoint analyses: a queue of their own, so that a worker consuming only it
# answers them while other workers train.
ANALYSIS_QUEUE = "analysis"


def queue_for(spec: ExperimentSpec, default_queue: str) -> str:
    """'gpu' for a spec that asks for cuda; every other job goes to the default queue."""
    return "gpu" if spec.training.device == "cuda" else default_queue


def enqueue_experiment(experiment_id: str, queue: str) -> None:
    """Wake a worker on `queue` for this experiment. Safe to call twice (the claim is a CAS)."""
    from worker.celery_app import RUN_EXPERIMENT, get_celery_app

    get_celery_app().send_task(RUN_EXPERIMENT, args=[experiment_id], queue=queue)


def enqueue_checkpoint_analysis(experiment_id: str, step: int, queue: str = ANALYSIS_QUEUE) -> None:
    """Ask a worker to analyse one stored checkpoint (the result lands in the analysis cache)."""
    from worker.celery_app import ANALYZE_CHECKPOINT, get_celery_app

    get_celery_app().send_task(ANALYZE_CHECKPOINT, args=[experiment_id, step], queue=queue)


def enqueue_progress_measures(experiment_id: str, final_step: int, queue: str) -> None:
    """Ask a worker for the progress measures at every checkpoint with the key frequencies of
    the one at final_step (the result lands in the progress_measures table)."""
    from worker.celery_app import PROGRESS_MEASURES, get_celery_app

    get_celery_app().send_task(PROGRESS_MEASURES, args=[experiment_id, final_step], queue=queue)
