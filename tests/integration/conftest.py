"""The real stack: PostgreSQL, Redis, a uvicorn API process and a celery worker process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import create_pg_database, drop_pg_database

FINISHED = ("succeeded", "failed", "cancelled")


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
    worker: subprocess.Popen
    api: subprocess.Popen

    def start_worker(self, name: str) -> subprocess.Popen:
        return groklab("worker", "--name", name, "--loglevel", "info", env=self.env, log=self.logs / f"{name.split('@')[0]}.log")


def stack_env(database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        GROKLAB_DATABASE_URL=database_url,
        GROKLAB_BROKER_URL=broker_url,
        GROKLAB_DATA_DIR=str(data_dir),
        GROKLAB_METRICS_FLUSH_S="0.5",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@pytest.fixture(scope="session")
def stack(postgres_server_url, redis_test_url, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("stack")
    database_url = create_pg_database(postgres_server_url)
    env = stack_env(database_url, redis_test_url, data_dir)
    subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True)
    port = free_port()
    api = groklab("api", "--port", str(port), env=env, log=data_dir / "api.log")
    worker = groklab("worker", "--name", "it-main@%h", env=env, log=data_dir / "worker.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", procs=(api, worker))
        client = httpx.Client(base_url=url, timeout=30)
        yield Stack(url, env, database_url, redis_test_url, client, data_dir, worker, api)
        client.close()
    finally:
        for p in (api, worker):
            if p.poll() is None:
                p.terminate()
        for p in (api, worker):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_pg_database(postgres_server_url, database_url)
