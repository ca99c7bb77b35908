"""Pause and resume on the real stack (PostgreSQL, Redis, the API process, one worker process with
one training process): a paused run stores a checkpoint at its step within a few seconds, frees
its worker for the next job, resumes from that checkpoint and ends with exactly the metrics of a
run never paused; pausing a sweep pauses every member; a finished job cannot be paused."""
from __future__ import annotations


import pytest

from tests.builders import tiny_job
from tests.integration.conftest import (raw_metrics, running_stack, uninterrupted_metrics,
                                        wait_for_status, wait_for_step)

pytestmark = pytest.mark.integration

EXPERIMENTS = "/api/v1/experiments"
SWEEPS = "/api/v1/sweeps"


@pytest.fixture
def one_worker(postgres_server_url, redis_databases, tmp_path):
    """The stack with one worker of one training process: a second job can start only when the
    first one frees it. One torch thread: on a busy machine two threads on these tiny matrices
    run many times slower (the metrics are the same)."""
    with running_stack(postgres_server_url, redis_databases.allocate(), tmp_path, workers=0,
                       GROKLAB_WORKER_PROCESSES="1", GROKLAB_TORCH_THREADS="1",
                       OMP_NUM_THREADS="1") as stack:
        stack.start_worker("only")
        yield stack


def checkpoint_steps(client, experiment_id: str) -> list[int]:
    return [c["step"] for c in client.get(f"{EXPERIMENTS}/{experiment_id}/checkpoints").json()]


def test_a_paused_run_frees_its_worker_and_resumes_to_the_metrics_of_an_unpaused_run(one_worker):
    client = one_worker.client
    first = client.post(EXPERIMENTS, json=tiny_job(
        "paused", steps=2000, eval_every=20, checkpoint_every=500)).json()
    wait_for_step(client, first["id"], 50)
    second = client.post(EXPERIMENTS, json=tiny_job("next", steps=60)).json()
    assert client.get(f"{EXPERIMENTS}/{second['id']}").json()["status"] == "queued"

    r = client.post(f"{EXPERIMENTS}/{first['id']}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["pause_requested"] is True
    paused = wait_for_status(client, first["id"], ("paused",), timeout=15)
    step = paused["progress"]["step"]
    assert 50 <= step < 2000 and paused["worker"] is None
    assert step in checkpoint_steps(client, first["id"])  # the checkpoint at its step

    # The worker it freed trains the next job while the first stays paused.
    done = wait_for_status(client, second["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert client.get(f"{EXPERIMENTS}/{first['id']}").json()["status"] == "paused"

    r = client.post(f"{EXPERIMENTS}/{first['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    resumed = wait_for_status(client, first["id"], timeout=120)
    assert resumed["status"] == "succeeded", resumed
    assert resumed["progress"]["step"] == 2000 and resumed["attempt"] == 2
    assert resumed["summary"]["resumed_from_step"] == step
    # Bit-identical on the CPU to a run that was never paused: no point missing or repeated.
    assert raw_metrics(client, first["id"]) == uninterrupted_metrics(resumed["spec"])

    refused = client.post(f"{EXPERIMENTS}/{first['id']}/pause")
    assert refused.status_code == 409 and refused.json()["status"] == "succeeded"
    assert "only a queued or running job can be paused" in refused.json()["detail"]


def test_pausing_a_sweep_pauses_every_member_and_resume_trains_them_on(one_worker):
    client = one_worker.client
    base = {k: v for k, v in tiny_job("s", steps=20000, eval_every=20, checkpoint_every=5000)
            .items() if k != "name"}
    created = client.post(SWEEPS, json={"name": "to-pause", "base": base,
                                        "grid": {"training.seed": [0, 1, 2]}}).json()
    assert created["n_packs"] == 1
    members = created["experiment_ids"]
    wait_for_step(client, members[0], 50)

    r = client.post(f"{SWEEPS}/{created['id']}/pause")
    assert r.status_code == 200, r.text
    steps = {}
    for experiment_id in members:
        job = wait_for_status(client, experiment_id, ("paused",), timeout=15)
        steps[experiment_id] = job["progress"]["step"]
        assert 50 <= steps[experiment_id] < 20000
        assert steps[experiment_id] in checkpoint_steps(client, experiment_id)
    sweep = client.get(f"{SWEEPS}/{created['id']}").json()
    assert sweep["status"] == "paused" and sweep["counts"]["paused"] == 3

    r = client.post(f"{SWEEPS}/{created['id']}/resume")
    # Every member queued again (a worker may already have claimed them by the answer).
    counts = r.json()["counts"]
    assert r.status_code == 200 and counts["paused"] == 0, r.text
    assert counts["queued"] + counts["running"] == 3, r.text
    for experiment_id in members:  # on again, from the step each was paused at
        job = wait_for_step(client, experiment_id, steps[experiment_id] + 20, timeout=60)
        assert job["attempt"] == 2
    assert client.post(f"{SWEEPS}/{created['id']}/cancel").status_code == 200
