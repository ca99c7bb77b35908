"""Workers on several hosts: two network namespaces, each with its own address, reach one Redis
and one PostgreSQL over the network; ten jobs each run to the end exactly once, and killing one
host's worker mid-job loses nothing (the other host finishes the job from its checkpoint)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.builders import tiny_job
from tests.integration.conftest import raw_metrics, running_stack, wait_for_status
from tests.integration.netns import Host, TcpForwarder, hosts

pytestmark = pytest.mark.integration

# Long enough (a couple of seconds each on a quiet machine, where a tiny model trains ~1,000
# steps/s) that the test sees host 1 mid-job before it kills it.
STEPS, EVAL_EVERY = 2000, 50
JOB = tiny_job("host-job", steps=STEPS, eval_every=EVAL_EVERY, checkpoint_every=250)
N_JOBS = 10


def require_namespaces() -> None:
    """ip netns needs the ip tool and root; under CI=true a missing one is a failure."""
    missing = shutil.which("ip") is None and "the ip command (iproute2)"
    missing = missing or (os.geteuid() != 0 and "root (to create network namespaces)")
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} is missing; CI=true requires it")
        pytest.skip(f"{missing} is missing")


def eval_steps() -> list[int]:
    """The steps every job evaluates at: 0, powers of two below eval_every, multiples of
    eval_every, and the last (worker/engine/train.py is_eval_step)."""
    early = [s for s in range(1, EVAL_EVERY) if s & (s - 1) == 0]
    return sorted({0, *early, *range(EVAL_EVERY, STEPS + 1, EVAL_EVERY), STEPS})


def start_worker(host: Host, name: str, env: dict, forwarder: TcpForwarder, log) -> subprocess.Popen:
    """`groklab worker` inside the host's namespace, reaching PostgreSQL and Redis through the
    forwarder on its gateway address; in a session of its own, to be killed whole."""
    database, broker = make_url(env["GROKLAB_DATABASE_URL"]), urlsplit(env["GROKLAB_BROKER_URL"])
    pg_port = forwarder.forward(host.gateway, database.host, database.port or 5432)
    redis_port = forwarder.forward(host.gateway, broker.hostname, broker.port or 6379)
    host_env = dict(
        env,
        GROKLAB_DATABASE_URL=database.set(host=host.gateway, port=pg_port)
        .render_as_string(hide_password=False),
        GROKLAB_BROKER_URL=broker._replace(netloc=f"{host.gateway}:{redis_port}").geturl(),
        GROKLAB_DATA_DIR=str(log.parent / name),
        # One torch thread: on a machine whose cores are busy, torch's default of one thread per
        # core runs this tiny model some 30x slower (threads spin waiting for each other).
        OMP_NUM_THREADS="1",
    )
    command = host.command(sys.executable, "-m", "service.cli", "worker", "--name", name)
    return subprocess.Popen(command, env=host_env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def jobs_by_id(client: httpx.Client) -> dict[str, dict]:
    page = client.get("/api/v1/experiments", params={"name": "host-job", "limit": 20}).json()
    return {job["id"]: job for job in page["items"]}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_hosts_run_ten_jobs_once_each_and_survive_a_killed_worker(
    postgres_server_url, redis_databases, tmp_path
):
    require_namespaces()
    workers: dict[str, subprocess.Popen] = {}
    forwarder = TcpForwarder()
    with running_stack(postgres_server_url, redis_databases.allocate(), tmp_path, workers=0,
                       GROKLAB_HEARTBEAT_TIMEOUT_S="4") as stack, hosts(2) as (h1, h2):
        try:
            for name, host in (("h1", h1), ("h2", h2)):
                workers[name] = start_worker(host, f"{name}@{host.namespace}", stack.env,
                                             forwarder, tmp_path / f"worker-{name}.log")
            ids = []
            for seed in range(N_JOBS):
                body = {**JOB, "training": {**JOB["training"], "seed": seed}}
                response = stack.client.post("/api/v1/experiments", json=body)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])

            # Kill host 1's worker mid-job, once it has finished a job and trained another past
            # its first checkpoint.
            deadline = time.monotonic() + 90
            while True:
                jobs = jobs_by_id(stack.client).values()
                on_h1 = [j for j in jobs if (j["worker"] or "").startswith("h1@")]
                running = [j for j in on_h1 if j["status"] == "running"
                           and 50 < j["progress"]["step"] < STEPS - EVAL_EVERY]
                if running and any(j["status"] == "succeeded" for j in on_h1):
                    break
                assert all(j["status"] in ("queued", "running", "succeeded") for j in jobs), jobs
                assert time.monotonic() < deadline, f"host 1 never ran a second job: {on_h1}"
                time.sleep(0.1)
            victim = running[0]["id"]
            os.killpg(workers["h1"].pid, signal.SIGKILL)
            workers["h1"].wait(timeout=10)

            done = {i: wait_for_status(stack.client, i, timeout=120) for i in ids}
            assert [j["status"] for j in done.values()] == ["succeeded"] * N_JOBS, [
                j.get("error") for j in done.values()
            ]
            # The killed job was finished by host 2, on its second claim; every other job ran once.
            assert done[victim]["worker"].startswith("h2@") and done[victim]["attempt"] == 2
            assert all(j["attempt"] == 1 for i, j in done.items() if i != victim)
            ran_on = {j["worker"].split("@")[0] for j in done.values()}
            assert ran_on == {"h1", "h2"}, ran_on

            # Each job has exactly its own points: one per (name, step) per eval step, none
            # duplicated (raw_metrics checks), none lost across the kill.
            expected_steps = eval_steps()
            total_points = 0
            for experiment_id in ids:
                points = raw_metrics(stack.client, experiment_id)
                for name in ("train_acc", "val_acc", "train_loss", "val_loss"):
                    steps = sorted(step for (n, member, step) in points if n == name)
                    assert steps == expected_steps, (experiment_id, name)
                total_points += len(points)

            # /metrics sees the same, read from the shared database and broker. The killed worker's
            # unacknowledged message may come back to the queue after host 2 finished its job (a
            # redelivery, which a worker takes and drops): the queue drains to empty, though not
            # necessarily by the time the last job has succeeded.
            deadline = time.monotonic() + 30
            queue = ("groklab_queue_depth", frozenset({("queue", "cpu")}))
            while True:
                samples = scrape(stack.url)
                ingested = samples.get(("groklab_metric_rows_ingested_total", frozenset()))
                if (ingested == total_points and samples.get(queue) == 0) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert ingested == total_points
            assert samples[("groklab_experiments", frozenset({("status", "succeeded")}))] == N_JOBS
            assert samples[("groklab_running_jobs", frozenset())] == 0
            assert samples[queue] == 0
            print(f"hosts: 2, workers killed: 1, jobs: {N_JOBS} succeeded, "
                  f"points: {total_points}, victim resumed on {done[victim]['worker']}")
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            forwarder.close()
