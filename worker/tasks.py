"""Celery tasks. Thin on purpose: the work is in worker.jobs, which a test can call directly.

Registered with shared_task, so importing this module builds no app: they join every app
built by service.infra.celery_app.make_celery (the worker's is get_celery_app()).
"""
from __future__ import annotations

import os

from celery import shared_task

from service.infra.celery_app import ANALYZE_CHECKPOINT, PROGRESS_MEASURES, RUN_EXPERIMENT
from worker.processes import training_process_name  # connects each pool child's limits


@shared_task(name=RUN_EXPERIMENT, bind=True)
def run_experiment(self, experiment_id: str) -> str:
    from worker.jobs import run_job  # torch is imported only by the worker process

    name = training_process_name(self.request.hostname or "worker")  # one per pool child
    return run_job(experiment_id, worker_name=name)


@shared_task(name=ANALYZE_CHECKPOINT)
def analyze_checkpoint(experiment_id: str, step: int, kind: str = "fourier") -> str:
    from worker.checkpoint_analysis import analyze_checkpoint as analyze

    return analyze(experiment_id, step, kind=kind)


@shared_task(name=PROGRESS_MEASURES)
def progress_measures(experiment_id: str, final_step: int) -> str:
    from worker.progress_measures import compute_progress_measures

    return compute_progress_measures(experiment_id, final_step)
