"""A database outage mid-job: PostgreSQL stops for ~5 s while a worker trains, then comes back.

The worker buffers its metric rows and retries its writes with backoff (worker.outage); the job
succeeds as its first attempt, with every evaluated step's points stored exactly once.

The PostgreSQL that goes down is a private one started for this test (initdb + pg_ctl as the
postgres user), never the shared server other tests use.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.builders import tiny_job
from tests.integration.conftest import (
    free_port,
    raw_metrics,
    running_stack,
    wait_for_status,
)

pytestmark = pytest.mark.integration

STEPS, EVAL_EVERY = 120, 10
JOB = tiny_job("outage", steps=STEPS, eval_every=EVAL_EVERY, checkpoint_every=60)
OUTAGE_S = 5


def pg_tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None
    )
    if found is None or os.geteuid() != 0:
        why = f"{name} is missing" if found is None else "the test must run as root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: a private PostgreSQL is needed; CI=true requires it")
        pytest.skip(why)
    return found


class PrivatePostgres:
    """A throwaway PostgreSQL server, run as the postgres OS user, that a test may stop."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="groklab-pg-"))
        shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres(pg_tool("initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres")

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off")
        self._as_postgres(pg_tool("pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(pg_tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", pg_tool("pg_ctl"), "-D",
                        str(self.data), "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.root, ignore_errors=True)


def eval_steps() -> list[int]:
    """0, powers of two below eval_every, multiples of eval_every, the last step
    (worker/engine/train.py is_eval_step)."""
    early = [s for s in range(1, EVAL_EVERY) if s & (s - 1) == 0]
    return sorted({0, *early, *range(EVAL_EVERY, STEPS + 1, EVAL_EVERY), STEPS})


def submit(client, kind: str) -> list[str]:
    """One experiment, or a sweep whose two members train as one pack: the same job path."""
    if kind == "experiment":
        r = client.post("/api/v1/experiments", json=JOB)
        assert r.status_code == 201, r.text
        return [r.json()["id"]]
    body = {"name": "outage-pack", "base": {k: v for k, v in JOB.items() if k != "name"},
            "grid": {"training.seed": [0, 1]}}
    r = client.post("/api/v1/sweeps", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["n_packs"] == 1
    return r.json()["experiment_ids"]


@pytest.mark.parametrize("kind", ["experiment", "pack"])
def test_a_postgres_restart_mid_job_loses_no_point_and_no_step(redis_databases, tmp_path, kind):
    server = PrivatePostgres()
    try:
        server.start()
        with running_stack(
            server.url, redis_databases.allocate(), tmp_path,
            # Long enough that the reaper does not requeue the job while the database is away.
            GROKLAB_HEARTBEAT_TIMEOUT_S="60", GROKLAB_DB_OUTAGE_S="120",
        ) as stack:
            ids = submit(stack.client, kind)
            exp_id = ids[0]
            deadline = time.monotonic() + 60
            while stack.client.get(f"/api/v1/experiments/{exp_id}").json()["progress"]["step"] == 0:
                assert time.monotonic() < deadline, "the job never started training"
                time.sleep(0.05)

            server.stop()  # mid-run
            time.sleep(OUTAGE_S)
            server.start()

            for exp_id in ids:
                job = wait_for_status(stack.client, exp_id, timeout=120)
                assert job["status"] == "succeeded", job.get("error")
                assert job["attempt"] == 1  # ridden out by the worker, not requeued
                assert job["progress"]["step"] == STEPS
                points = raw_metrics(stack.client, exp_id)  # asserts no duplicated point too
                names = {name for name, _, _ in points}
                expected = eval_steps()
                lost = {
                    name: sorted(set(expected) - {s for n, _, s in points if n == name})
                    for name in names
                }
                assert names and not any(lost.values()), f"points lost in {exp_id}: {lost}"
            logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
            assert "database unavailable" in logs  # the worker did see the outage
    finally:
        server.remove()
