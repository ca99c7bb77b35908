"""Several training processes on one database: each job is claimed by exactly one of them, the
fair order still serves a small owner beside a large one, and on SQLite (`groklab up`) their
metric writes and heartbeats wait for each other instead of failing with "database is
locked". On SQLite and PostgreSQL."""
from __future__ import annotations

import multiprocessing
import uuid

from service import store
from service.infra.db import make_engine, make_sessionmaker
from tests.builders import tiny_spec

PROCESSES = 4
BATCHES = 15


def claim_until_empty(url: str, queue: str, name: str, start) -> list[tuple[str, int]]:
    """One training process: claim the next fair job until none is queued; for each, write
    metric batches and heartbeats as a recorder would. Returns (job, attempt) claimed."""
    sessions = make_sessionmaker(make_engine(url))
    start.wait()
    claimed = []
    while True:
        with sessions() as s:
            pick = store.next_fair_job(s, queue)
            if pick is None:
                return claimed
            job = store.claim_experiment(s, pick, name)
            if job is None:  # another process won the compare-and-swap: pick again
                continue
            claimed.append((job.id, job.attempt))
            for batch in range(BATCHES):
                rows = [{"step": batch * 10 + i, "member": 0, "name": "train_loss", "value": 1.0}
                        for i in range(10)]
                assert store.ingest_metrics(s, job.id, rows, attempt=job.attempt) == 10
                assert store.heartbeat(s, job.id, job.attempt)


def test_processes_claim_each_job_once_in_fair_order(db_url, sessions):
    queue, tag = f"q-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]  # this test's jobs only
    with sessions() as s:
        many = [store.create_experiment(s, tiny_spec(f"a{i}"), queue, f"alice-{tag}").id
                for i in range(12)]
        few = [store.create_experiment(s, tiny_spec(f"b{i}"), queue, f"bob-{tag}").id
               for i in range(4)]

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(PROCESSES) as pool:
        start = manager.Barrier(PROCESSES)
        results = pool.starmap(
            claim_until_empty, [(db_url, queue, f"p{i}", start) for i in range(PROCESSES)],
            chunksize=1)

    claims = [job for result in results for job, _ in result]
    assert sorted(claims) == sorted(many + few)  # every job once, none twice
    assert sum(1 for result in results if result) >= 2  # the processes shared the work
    with sessions() as s:
        jobs = [store.get_experiment(s, job_id) for job_id in many + few]
        for job in jobs:
            assert (job.status, job.attempt) == ("running", 1)
            points = store.query_metrics(s, job.id, names=["train_loss"], max_points=None)
            assert len(points["series"][0]["steps"]) == BATCHES * 10
    # Fair order across processes: the owner with fewer running jobs goes first, so bob's four
    # are started among the first twelve (one process alone: the first eight), never behind
    # all of alice's twelve.
    order = [job.owner for job in sorted(jobs, key=lambda job: job.started_at)]
    assert order[:12].count(f"bob-{tag}") == 4, order
