"""The broker's names and the Celery app: the queues, the task names, and `make_celery(settings)`;
`get_celery_app()` builds the process's one app from the environment's settings on first use.
Importing this module builds nothing, connects nowhere and creates no folder. Torch-free: the
API sends tasks by name through it (service.infra.queueing), and the worker's tasks
(worker/tasks.py) register under these names.

The database, not the broker, is the source of truth for a job's state. The broker only wakes
workers up, so every setting here is chosen so that a message is never lost, and the task
itself (a compare-and-swap claim in the database) makes sure that a redelivered message cannot
start a second copy of a job.
"""
from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Exchange, Queue

from service.contract.settings import Settings, get_settings

QUEUES = ("gpu", "cpu", "analysis")
# On-demand checkpoint analyses: a queue of their own, so that a worker consuming only it
# answers them while other workers train.
ANALYSIS_QUEUE = "analysis"
# The names the worker's tasks are registered under; every send names its queue too.
RUN_EXPERIMENT = "worker.tasks.run_experiment"
ANALYZE_CHECKPOINT = "worker.tasks.analyze_checkpoint"
PROGRESS_MEASURES = "worker.tasks.progress_measures"


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' broker. The embedded filesystem broker's folders are
    created here, when an app is built on them."""
    app = Celery("groklab", broker=settings.resolved_broker_url)
    transport_options: dict = {}
    if settings.resolved_broker_url.startswith("filesystem://"):
        folder = settings.broker_dir
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
    else:
        # Redis redelivers an unacked message after visibility_timeout. Training jobs ack late
        # (after they finish), so the timeout must outlast the longest job, or Redis would hand
        # a running job to a second worker. The claim in the database guards against that too.
        # kombu sweeps for messages past the timeout every interval x throttle seconds (100 s by
        # default); tie the sweep to the timeout so a short timeout really redelivers.
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": max(1, min(60, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Ack after the job is done: a worker that dies mid-job leaves the message on the broker.
        task_acks_late=True,
        # A worker killed by the OOM killer or SIGKILL requeues its message instead of dropping it.
        task_reject_on_worker_lost=True,
        # One hour-long job per training process at a time; never hoard messages another worker
        # could run. `groklab worker` runs as many processes as the host's plan says
        # (service/science/worker_plan.py); each child limits its threads (worker/processes.py).
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_default_queue=settings.default_queue,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
    )
    return app


@lru_cache(maxsize=1)
def get_celery_app() -> Celery:
    """The process's Celery app, built from the environment's settings on first use."""
    return make_celery(get_settings())

