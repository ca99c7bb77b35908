"""The real stack: PostgreSQL, Redis, a uvicorn API process and a celery worker process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import create_pg_database, drop_pg_database

FINISHED = ("succeeded", "failed", "cancelled", "pruned")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def groklab(*args: str, env: dict, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )


def wait_http(url: str, timeout: float = 60.0, procs: tuple = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process {p.args} exited with {p.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_for_status(client: httpx.Client, experiment_id: str, statuses=FINISHED, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/experiments/{experiment_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{experiment_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.3)


@dataclass
class Stack:
    url: str
    env: dict
    database_url: str
    broker_url: str
    client: httpx.Client
    logs: Path
    api: subprocess.Popen
    workers: list[subprocess.Popen]

    def start_worker(self, name: str, nice: int = 0, **env: str) -> subprocess.Popen:
        """A worker process in a session of its own, so a test can kill -9 it whole; env
        overrides the stack's settings for it (e.g. GROKLAB_WORKER_PROCESSES); nice > 0 runs it
        and its training processes at that lower CPU priority."""
        log = open(self.logs / f"worker-{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--name", f"{name}@%h"],
            env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def stack_env(database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(
        GROKLAB_DATABASE_URL=database_url,
        GROKLAB_BROKER_URL=broker_url,
        GROKLAB_DATA_DIR=str(data_dir),
        GROKLAB_METRICS_FLUSH_S="0.5",
        # Short lifecycle timings so the reaper and reconciler act within a test's patience.
        GROKLAB_HEARTBEAT_S="1",
        GROKLAB_HEARTBEAT_TIMEOUT_S="6",
        GROKLAB_REAPER_INTERVAL_S="1",
        GROKLAB_RECONCILE_AFTER_S="3",
        # One training process per worker, whatever the test host's cores: these tests count
        # workers as jobs at a time, and pack sweeps as for one process. A test of the
        # multi-process worker passes its own.
        GROKLAB_WORKER_PROCESSES="1",
        GROKLAB_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextmanager
def running_stack(admin_url: str, broker_url: str, data_dir: Path, workers: int = 1,
                  worker_nice: int = 0, **extra_env: str):
    """A fresh database, migrated; the API process; `workers` worker processes (at CPU
    priority `worker_nice`)."""
    database_url = create_pg_database(admin_url)
    env = stack_env(database_url, broker_url, data_dir, **extra_env)
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    token = subprocess.run(
        [sys.executable, "-m", "service.cli", "token", "create", "--owner", "it", "--scope", "admin"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    port = free_port()
    api = groklab("api", "--port", str(port), env=env, log=data_dir / "api.log")
    url = f"http://127.0.0.1:{port}"
    stack = Stack(url, env, database_url, broker_url, None, data_dir, api, [])
    try:
        for i in range(workers):
            stack.start_worker(f"w{i}", nice=worker_nice)
        wait_http(f"{url}/healthz", procs=(api,))
        stack.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        yield stack
        stack.client.close()
    finally:
        for p in (api, *stack.workers):
            if p.poll() is None:
                p.terminate()
        for p in (api, *stack.workers):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for p in stack.workers:  # its training processes too: none may outlive the test
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drop_pg_database(admin_url, database_url)


@pytest.fixture(scope="session")
def stack(postgres_server_url, redis_test_url, tmp_path_factory):
    with running_stack(postgres_server_url, redis_test_url, tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
def bare_stack(postgres_server_url, redis_databases, tmp_path):
    """An API with the lifecycle loop but no worker: each test starts and kills its own."""
    with running_stack(postgres_server_url, redis_databases.allocate(), tmp_path, workers=0) as s:
        yield s


def raw_metrics(client, experiment_id: str) -> dict[tuple[str, int, int], float]:
    payload = client.get(f"/api/v1/experiments/{experiment_id}/metrics").json()
    points = {}
    for s in payload["series"]:
        assert len(s["steps"]) == len(set(s["steps"])), f"duplicated points in {s['name']}"
        for step, value in zip(s["steps"], s["values"]):
            points[(s["name"], s["member"], step)] = value
    return points


def uninterrupted_metrics(spec_body: dict) -> dict[tuple[str, int, int], float]:
    """The run's metrics (its progress measures too) trained in this process from start to end,
    never paused, killed or resumed: what a resumed run must store exactly. (The tests train on
    one torch thread, as the worker does: tests/conftest.py.)"""
    from service.contract.spec import ExperimentSpec
    from worker.analysis.callback import analysis_callback
    from worker.engine.train import Trainer

    spec = ExperimentSpec.model_validate(spec_body)
    rows: list[dict] = []
    Trainer(spec).run(on_metrics=rows.extend, on_analysis=analysis_callback(spec))
    return {(r["name"], r["member"], r["step"]): r["value"] for r in rows}


def wait_for_step(client, experiment_id: str, at_least: int, timeout: float = 120) -> dict:
    """The job once it runs at step `at_least` or later (it must not finish before)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/experiments/{experiment_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= at_least:
            return job
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"never reached step {at_least}: {job}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def grokked_run(stack):
    """One ci-small run through the whole stack, shared by the tests that inspect it."""
    r = stack.client.post("/api/v1/experiments", json={"name": "ci-small-e2e", "preset": "ci-small"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued"
    done = wait_for_status(stack.client, job["id"], timeout=600)
    return done


def wait_for_sweep(client: httpx.Client, sweep_id: str, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        sweep = client.get(f"/api/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in FINISHED:
            return sweep
        assert time.monotonic() < deadline, f"sweep still {sweep['status']}: {sweep}"
        time.sleep(0.5)


# ci-small's recipe at 2 x 2: weight decay {0, 1} x train fraction, seed 0. 800 steps is past
# the step where ci-small generalises at 60% data (seed 0: 450) and stays fast.
CI_SMALL_GRID = {
    "name": "wd-by-fraction",
    "base": {"preset": "ci-small", "training": {"steps": 800, "checkpoint_every": 400},
             "analysis": {"every": None}},
    "grid": {
        "optimizer.weight_decay": [0, 1],
        "task.train_fraction": [0.4, 0.6],
    },
}


@pytest.fixture(scope="session")
def ci_small_sweep(stack):
    """The CI_SMALL_GRID sweep, trained once, shared by the tests that read it: (the POST's
    answer, the finished sweep)."""
    r = stack.client.post("/api/v1/sweeps", json=CI_SMALL_GRID)
    assert r.status_code == 201, r.text
    created = r.json()
    return created, wait_for_sweep(stack.client, created["id"])
