"""No job lost, none run twice: killed workers, a flushed or restarted broker, redelivery, and a
burst of concurrent submissions. Real PostgreSQL, Redis and worker processes throughout."""
from __future__ import annotations

import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.builders import tiny_job
from tests.integration.conftest import (raw_metrics, running_stack, uninterrupted_metrics,
                                        wait_for_status, wait_for_step)

pytestmark = pytest.mark.integration

# Long enough to be killed twice at different points, small enough to train fast.
RESUMABLE = tiny_job("resumable", p=23, width=32, steps=3000, eval_every=25,
                     checkpoint_every=100, analysis_every=1000)
TINY = tiny_job("tiny", p=7, width=8, steps=4, eval_every=2, checkpoint_every=4)
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def test_kill_9_twice_resumes_from_checkpoints_with_identical_metrics(bare_stack):
    client = bare_stack.client
    job = client.post("/api/v1/experiments", json=RESUMABLE).json()
    kills = 0
    for kill_at in (700, 1900):
        worker = bare_stack.start_worker(f"victim{kills}")
        wait_for_step(client, job["id"], kill_at)
        bare_stack.kill_worker(worker)
        kills += 1
    bare_stack.start_worker("survivor")
    done = wait_for_status(client, job["id"], timeout=300)

    assert done["status"] == "succeeded", done.get("error")
    assert done["attempt"] == kills + 1
    # The last attempt resumed from a checkpoint at or after the second kill point's checkpoint.
    assert done["summary"]["resumed_from_step"] >= 1800
    assert raw_metrics(client, job["id"]) == uninterrupted_metrics(RESUMABLE)


def test_a_job_whose_worker_keeps_dying_fails_with_the_reason(bare_stack):
    client = bare_stack.client
    job = client.post("/api/v1/experiments", json={**RESUMABLE, "name": "doomed"}).json()
    for i in range(3):  # max_attempts is 3
        worker = bare_stack.start_worker(f"doomed{i}")
        wait_for_status(client, job["id"], statuses=("running",), timeout=60)
        wait_for_step(client, job["id"], 1)
        bare_stack.kill_worker(worker)
        if i < 2:
            wait_for_status(client, job["id"], statuses=("queued",), timeout=30)
    done = wait_for_status(client, job["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["attempt"] == 3
    assert "gave up after 3 attempts" in done["error"]
    assert "heartbeat" in done["error"]


def test_jobs_survive_a_flushed_broker(bare_stack):
    client = bare_stack.client
    ids = [client.post("/api/v1/experiments", json={**TINY, "name": f"flush{i}"}).json()["id"] for i in range(5)]
    broker = redis.Redis.from_url(bare_stack.broker_url)
    assert broker.llen("cpu") == 5
    broker.flushdb()  # this test session's Redis database: FLUSHALL for everything we own
    assert broker.llen("cpu") == 0
    bare_stack.start_worker("after-flush")
    for i in ids:
        done = wait_for_status(client, i, timeout=120)
        assert done["status"] == "succeeded" and done["attempt"] == 1


def test_jobs_survive_a_redis_restart(bare_stack):
    client = bare_stack.client
    bare_stack.start_worker("through-restart")
    running = client.post("/api/v1/experiments", json={**RESUMABLE, "name": "during-restart", "training": {**RESUMABLE["training"], "steps": 1500}}).json()
    wait_for_status(client, running["id"], statuses=("running",), timeout=60)
    queued = [client.post("/api/v1/experiments", json={**TINY, "name": f"restart{i}"}).json()["id"] for i in range(3)]

    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], check=False)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "ping"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        subprocess.run(shlex.split(REDIS_START), check=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis did not come back"
            time.sleep(0.1)

    for i in [running["id"], *queued]:
        done = wait_for_status(client, i, timeout=240)
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 1


def test_redelivery_after_visibility_timeout_never_runs_a_job_twice(postgres_server_url, redis_databases, tmp_path):
    with running_stack(
        postgres_server_url, redis_databases.allocate(), tmp_path, workers=2,
        GROKLAB_VISIBILITY_TIMEOUT_S="2",
    ) as stack:
        job = stack.client.post("/api/v1/experiments", json={**RESUMABLE, "name": "outlives-timeout", "training": {**RESUMABLE["training"], "steps": 2000}}).json()
        done = wait_for_status(stack.client, job["id"], timeout=300)
        assert done["status"] == "succeeded", done.get("error")
        assert done["attempt"] == 1
        assert done["summary"]["resumed_from_step"] is None
        points = raw_metrics(stack.client, job["id"])
        assert max(step for (_, _, step) in points) == 2000
        # Every claim is logged: the broker did hand the job out again past the timeout, and
        # the job was claimed exactly once across both workers.
        logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert f"job {job['id']} not claimable (running)" in logs
        assert logs.count(f"claimed job {job['id']}") == 1


def test_200_concurrent_submissions_each_train_exactly_once(postgres_server_url, redis_databases, tmp_path):
    with running_stack(postgres_server_url, redis_databases.allocate(), tmp_path, workers=2) as stack:
        def submit(i: int) -> str:
            r = stack.client.post("/api/v1/experiments", json={**TINY, "name": "burst", "training": {**TINY["training"], "seed": i}})
            assert r.status_code == 201, r.text
            return r.json()["id"]

        with ThreadPoolExecutor(max_workers=32) as pool:
            ids = list(pool.map(submit, range(200)))
        assert len(set(ids)) == 200

        listed, cursor = [], None
        while True:
            page = stack.client.get("/api/v1/experiments", params={"name": "burst", "limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            listed += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(listed) == sorted(ids)

        for i in ids:
            done = wait_for_status(stack.client, i, timeout=600)
            assert done["status"] == "succeeded", done.get("error")
            assert done["attempt"] == 1
        logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert sum(logs.count(f"claimed job {i}") for i in ids) == 200
