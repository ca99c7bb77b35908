"""The reaper and the reconciler on both backends (their end-to-end tests, with killed worker
processes and a flushed Redis, are in tests/integration/test_reliability.py)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from service import store
from service.infra import lifecycle
from service.contract.models import Experiment, utcnow
from service.contract.settings import Settings
from tests.builders import tiny_spec


def running_job(session, *, beat_age_s: float, attempt_cap: int = 3, cancel: bool = False) -> Experiment:
    exp = store.create_experiment(session, tiny_spec(), "cpu")
    exp = store.claim_experiment(session, exp.id, "w1")
    session.execute(
        update(Experiment).where(Experiment.id == exp.id).values(
            heartbeat_at=utcnow() - timedelta(seconds=beat_age_s),
            max_attempts=attempt_cap, cancel_requested=cancel,
        )
    )
    session.commit()
    return exp


def test_reaper_requeues_a_stale_job_and_leaves_a_live_one(session):
    stale = running_job(session, beat_age_s=120)
    live = running_job(session, beat_age_s=1)
    requeued, ended = store.reap_stale_jobs(session, stale_after_s=60)
    assert requeued == [stale.id] and ended == []
    assert store.get_experiment(session, stale.id).status == "queued"
    assert store.get_experiment(session, live.id).status == "running"
    # The old attempt can no longer report or finish: its CAS fails.
    assert not store.update_progress(session, stale.id, 1, step=5, steps_per_s=None, eta_s=None)
    assert not store.heartbeat(session, stale.id, 1)
    # The next claim is attempt 2.
    assert store.claim_experiment(session, stale.id, "w2").attempt == 2


def test_reaper_fails_a_job_out_of_attempts_and_says_why(session):
    doomed = running_job(session, beat_age_s=120, attempt_cap=1)
    requeued, ended = store.reap_stale_jobs(session, stale_after_s=60)
    assert requeued == [] and ended == [doomed.id]
    exp = store.get_experiment(session, doomed.id)
    assert exp.status == "failed"
    assert "gave up after 1 attempts" in exp.error and "heartbeat" in exp.error


def test_reaper_ends_a_stale_job_whose_cancel_was_requested(session):
    cancelled = running_job(session, beat_age_s=120, cancel=True)
    store.reap_stale_jobs(session, stale_after_s=60)
    assert store.get_experiment(session, cancelled.id).status == "cancelled"


def test_reconciler_enqueues_only_jobs_missing_from_the_broker(session, tmp_path, db_url):
    from service.infra.celery_app import make_celery

    settings = Settings(data_dir=tmp_path, database_url=db_url, reconcile_after_s=0)
    app = make_celery(settings)
    waiting = store.create_experiment(session, tiny_spec(), "cpu")
    lost = store.create_experiment(session, tiny_spec(), "cpu")
    app.send_task("worker.tasks.run_experiment", args=[waiting.id], queue="cpu")
    assert lifecycle.broker_job_ids(settings.resolved_broker_url, ["cpu"], settings.broker_dir) == {waiting.id}

    enqueued: list = []
    again = lifecycle.reconcile_lost_messages(session, settings, lambda i, q: enqueued.append((i, q)))
    # (The database is shared with other tests, whose queued jobs may show up too.)
    assert lost.id in again and waiting.id not in again
    assert (lost.id, "cpu") in enqueued and all(i != waiting.id for i, _ in enqueued)


def test_a_tick_enqueues_a_requeued_job_on_its_queue(sessions, tmp_path, db_url):
    settings = Settings(data_dir=tmp_path, database_url=db_url, heartbeat_timeout_s=60)
    with sessions() as session:
        stale = running_job(session, beat_age_s=120)
    enqueued: list = []
    lifecycle.LifecycleLoop(sessions, settings, lambda i, q: enqueued.append((i, q))).tick()
    assert (stale.id, "cpu") in enqueued
    with sessions() as session:
        assert store.get_experiment(session, stale.id).status == "queued"
