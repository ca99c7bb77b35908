"""A worker of several training processes: kill -9 of one of them resumes its job elsewhere,
and leaves the job of the other process untouched."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.builders import tiny_job
from tests.integration.conftest import raw_metrics, wait_for_status

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    """The live child processes of pid (Celery's pool of training processes)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # it exited meanwhile
            continue
        if int(fields.get("PPid", "0").strip()) == pid and fields.get("State", "").strip()[0] != "Z":
            found.append(int(status.parent.name))
    return found


def test_kill_9_of_one_training_process_resumes_its_job_alone(bare_stack):
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import Trainer

    client = bare_stack.client
    ids = []
    for name in ("a", "b"):
        body = tiny_job(name, p=23, width=32, steps=1500, eval_every=25, checkpoint_every=100)
        r = client.post("/api/v1/experiments", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    worker = bare_stack.start_worker("pair", GROKLAB_WORKER_PROCESSES="2", GROKLAB_TORCH_THREADS="1")
    deadline = time.monotonic() + 120
    while True:  # both jobs training, each in its own process, past a few checkpoints
        jobs = [client.get(f"/api/v1/experiments/{i}").json() for i in ids]
        if all(j["status"] == "running" and j["progress"]["step"] >= 300 for j in jobs):
            break
        assert time.monotonic() < deadline, f"never both running: {jobs}"
        time.sleep(0.1)
    assert len({j["worker"] for j in jobs}) == 2
    pool = children_of(worker.pid)
    assert len(pool) == 2, pool
    os.kill(pool[0], signal.SIGKILL)  # one training process dies; the worker lives on

    done = [wait_for_status(client, i, timeout=240) for i in ids]
    assert [j["status"] for j in done] == ["succeeded", "succeeded"], [j.get("error") for j in done]
    resumed = [j for j in done if j["attempt"] == 2]
    untouched = [j for j in done if j["attempt"] == 1]
    assert len(resumed) == 1 and len(untouched) == 1, [j["attempt"] for j in done]
    assert resumed[0]["summary"]["resumed_from_step"] >= 300
    assert untouched[0]["summary"]["resumed_from_step"] is None
    assert worker.poll() is None  # the worker itself was never down
    for job in done:  # both bit-identical to a run that was never interrupted (CPU)
        rows: list[dict] = []
        Trainer(ExperimentSpec.model_validate(job["spec"])).run(on_metrics=rows.extend)
        expected = {(r["name"], r["member"], r["step"]): r["value"] for r in rows}
        assert raw_metrics(client, job["id"]) == expected, job["name"]
    bare_stack.kill_worker(worker)
