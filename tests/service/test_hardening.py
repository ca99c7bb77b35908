"""Hardening: the reaper's race and the database clock, attempt-checked writes, bounded
reconciler scans, private data files, one-line job errors, the 413 beyond the drain bound.

The store tests run on SQLite and PostgreSQL (the `session`/`sessions` fixtures)."""
from __future__ import annotations

import json
import logging
import stat
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from service import store
from service.app import create_app
from service.infra import lifecycle
from service.infra.db import make_engine, migrate
from service.contract.models import Checkpoint, Experiment, utcnow
from service.contract.settings import Settings
from tests.builders import tiny_spec
from tests.service.test_lifecycle import running_job

POINT = [{"step": 5, "member": 0, "name": "train_loss", "value": 1.0}]


def points_of(session, exp_id: str) -> int:
    count = session.execute(
        text("SELECT count(*) FROM metrics WHERE experiment_id = :i"), {"i": exp_id}
    ).scalar_one()
    session.commit()
    return count


# ---- the reaper's race and the database's clock ---------------------------------------------
def test_a_heartbeat_between_the_reapers_read_and_write_keeps_its_job(sessions):
    with sessions() as reaper, sessions() as worker:
        job = running_job(reaper, beat_age_s=120)
        stale = store.stale_jobs(reaper, stale_after_s=60)
        assert job.id in [row[0] for row in stale]
        assert store.heartbeat(worker, job.id, job.attempt)  # lands between the two
        requeued, ended = store.requeue_stale_jobs(reaper, stale, stale_after_s=60)
        assert job.id not in requeued + ended
        assert store.get_experiment(reaper, job.id).status == "running"


def test_a_worker_clock_hours_off_does_not_matter(sessions, monkeypatch):
    """Heartbeats carry the database's time, and the reaper judges them by it."""
    from service.store import experiments

    with sessions() as session:
        behind = running_job(session, beat_age_s=0)
        ahead = running_job(session, beat_age_s=0)
        for exp, skew in ((behind, -3), (ahead, +3)):
            worker_clock = lambda skew=skew: utcnow() + timedelta(hours=skew)  # noqa: E731
            monkeypatch.setattr(experiments, "utcnow", worker_clock)
            assert store.heartbeat(session, exp.id, exp.attempt)
        monkeypatch.setattr(experiments, "utcnow", utcnow)
        requeued, _ = store.reap_stale_jobs(session, stale_after_s=60)
        assert behind.id not in requeued
        beats = dict(session.execute(
            select(Experiment.id, Experiment.heartbeat_at)
            .where(Experiment.id.in_([behind.id, ahead.id]))
        ).all())
        for beat in beats.values():  # the database's now, not the worker's
            assert abs((beat - utcnow()).total_seconds()) < 60
        # A worker 3 h ahead that died is still found stale once its beat is old.
        session.execute(update(Experiment).where(Experiment.id == ahead.id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=120)))
        session.commit()
        requeued, _ = store.reap_stale_jobs(session, stale_after_s=60)
        assert ahead.id in requeued


# ---- attempt-checked writes ------------------------------------------------------------------
def test_a_stale_attempt_stores_no_metric_and_no_checkpoint(session):
    first = running_job(session, beat_age_s=120)
    store.reap_stale_jobs(session, stale_after_s=60)
    # Requeued, not yet claimed again: the old attempt already writes nothing.
    assert store.ingest_metrics(session, first.id, POINT, attempt=1) == 0
    second = store.claim_experiment(session, first.id, "w2")
    assert second.attempt == 2
    assert store.ingest_metrics(session, first.id, POINT, attempt=1) == 0
    assert store.add_checkpoint(session, first.id, 10, b"old", {}, attempt=1) is None
    assert points_of(session, first.id) == 0
    assert store.get_checkpoint(session, first.id, 10) is None
    # The attempt that owns the job writes.
    assert store.ingest_metrics(session, first.id, POINT, attempt=2) == 1
    assert store.add_checkpoint(session, first.id, 10, b"new", {}, attempt=2) is not None
    assert points_of(session, first.id) == 1
    assert session.scalar(select(Checkpoint.size).where(
        Checkpoint.experiment_id == first.id, Checkpoint.step == 10)) == 3
    session.commit()


# ---- bounded reconciler scans ------------------------------------------------------------
def test_queued_jobs_reads_at_most_the_oldest_rows(session):
    for _ in range(4):
        store.create_experiment(session, tiny_spec(), "cpu")
    page = store.queued_jobs(session, older_than_s=-60, limit=3)
    everything = store.queued_jobs(session, older_than_s=-60)
    assert len(page) == 3 and page == everything[:3]


def test_the_reconciler_reads_a_bounded_part_of_a_long_redis_queue(
    session, db_url, tmp_path, redis_databases, monkeypatch
):
    import redis

    url = redis_databases.allocate()
    client = redis.Redis.from_url(url)
    message = json.dumps({"body": json.dumps([["someone-else"], {}, {}]),
                          "properties": {"body_encoding": "utf-8"}})
    pipe = client.pipeline(transaction=False)
    for start in range(0, 100_000, 10_000):
        pipe.lpush("gpu", *[message] * 10_000)
    pipe.execute()
    assert client.llen("gpu") == 100_000

    decoded = []
    real = lifecycle._job_id_of
    monkeypatch.setattr(lifecycle, "_job_id_of", lambda m: decoded.append(1) or real(m))
    assert lifecycle.broker_job_ids(url, ["gpu"], limit=1000) is None
    assert decoded == []  # a length check, not a read of 10^5 messages

    lost = store.create_experiment(session, tiny_spec(), "cpu")
    gpu_job = store.create_experiment(session, tiny_spec(), "gpu")
    settings = Settings(data_dir=tmp_path, database_url=db_url, broker_url=url,
                        reconcile_after_s=0, reconcile_scan_limit=1000)
    enqueued: list = []
    again = lifecycle.reconcile_lost_messages(
        session, settings, lambda i, q: enqueued.append((i, q))
    )
    # The short queue is checked (its lost job enqueued again), the long one left alone.
    assert lost.id in again and gpu_job.id not in again
    assert len(decoded) <= 1000
    client.flushdb()


# ---- private data files --------------------------------------------------------------------
def test_the_sqlite_files_are_readable_by_their_owner_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'groklab.db'}"
    migrate(url)
    engine = make_engine(url)
    with engine.connect() as connection:  # WAL mode: the -wal and -shm files exist now
        connection.execute(text("SELECT count(*) FROM experiments"))
        files = sorted(p.name for p in (tmp_path / "data").iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "data").iterdir()}
    engine.dispose()
    assert "groklab.db" in files and "groklab.db-wal" in files
    assert set(modes.values()) == {0o600}, modes


# ---- one-line job errors -------------------------------------------------------------------
def test_a_failed_job_tells_its_user_one_line_and_logs_the_traceback(api_settings, caplog):
    from worker.jobs import run_job

    engine = make_engine(api_settings.resolved_database_url)
    from service.infra.db import make_sessionmaker

    with make_sessionmaker(engine)() as session:
        exp = store.create_experiment(session, tiny_spec(), "cpu")
        store.add_checkpoint(session, exp.id, 10, b"not a checkpoint\n at all", {})
    with caplog.at_level(logging.ERROR, logger="worker.jobs"):
        assert run_job(exp.id, "test-worker", settings=api_settings) == "failed"
    with make_sessionmaker(engine)() as session:
        error = store.get_experiment(session, exp.id).error
    engine.dispose()
    assert error.startswith("CheckpointCorrupt: checkpoint at step 10")
    assert "\n" not in error and "Traceback" not in error and ".py" not in error
    assert len(error) <= 500
    assert "Traceback" in caplog.text and "jobs.py" in caplog.text


# ---- 413 beyond the drain bound ------------------------------------------------------------
def test_a_body_beyond_the_drain_bound_gets_its_413_and_a_closed_connection(tmp_path):
    settings = Settings(data_dir=tmp_path, max_body_bytes=1000, body_drain_bytes=5000,
                        reaper_interval_s=0)
    with TestClient(create_app(settings)) as client:
        drained = client.post("/api/v1/experiments", content=b"x" * 3000)
        closed = client.post("/api/v1/experiments", content=b"x" * 10_000)
    assert drained.status_code == closed.status_code == 413
    assert "GROKLAB_MAX_BODY_BYTES" in closed.json()["detail"]
    assert drained.headers.get("connection") != "close"
    assert closed.headers["connection"] == "close"
