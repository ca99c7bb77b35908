"""Celery tasks. Thin on purpose: the work is in worker.runner, which a test can call directly."""
from __future__ import annotations

from worker.celery_app import RUN_EXPERIMENT, celery_app


@celery_app.task(name=RUN_EXPERIMENT, bind=True)
def run_experiment(self, experiment_id: str) -> str:
    from worker.runner import run_job  # torch is imported only by the worker process

    return run_job(experiment_id, worker_name=self.request.hostname or "worker")
