"""`groklab up` as a user runs it: SQLite and a filesystem broker, no PostgreSQL or Redis."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.builders import tiny_job
from tests.integration.conftest import free_port, wait_for_status, wait_http

pytestmark = pytest.mark.integration

TINY = tiny_job("tiny", steps=60, eval_every=20, checkpoint_every=30, analysis_every=30)


@contextmanager
def groklab_up(tmp_path: Path, **settings: str):
    """`groklab up` in a data dir of its own, with these GROKLAB_* settings and no others;
    yields its URL once ready. Stopped with Ctrl-C (SIGINT) at the end, which must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(PYTHONUNBUFFERED="1", **settings)
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        env=env, stdout=open(tmp_path / "up.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=90, procs=(up,))
        yield url
    finally:
        up.send_signal(signal.SIGINT)
        try:
            rc = up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    assert rc == 0


def test_groklab_up_end_to_end(tmp_path):
    with groklab_up(tmp_path) as url:
        output = (tmp_path / "up.log").read_text()
        assert url in output
        client = httpx.Client(base_url=url, headers=_auth_headers(output), timeout=30)
        r = client.post("/api/v1/experiments", json=TINY)
        assert r.status_code == 201, r.text
        job = wait_for_status(client, r.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job.get("error")
        assert job["progress"]["step"] == 60

        metrics = client.get(f"/api/v1/experiments/{job['id']}/metrics", params={"names": "train_loss"}).json()
        (series,) = metrics["series"]
        assert series["steps"][-1] == 60
        assert series["values"][-1] < series["values"][0]

        listing = client.get(f"/api/v1/experiments/{job['id']}/checkpoints").json()
        assert [c["step"] for c in listing] == [30, 60]
        blob = client.get(f"/api/v1/experiments/{job['id']}/checkpoints/60").content
        assert hashlib.sha256(blob).hexdigest() == listing[1]["sha256"]

        csv = client.get(f"/api/v1/experiments/{job['id']}/metrics", params={"names": "val_acc", "format": "csv"})
        assert csv.status_code == 200
        assert csv.text.splitlines()[0].startswith("name")
        assert (tmp_path / "data" / "groklab.db").exists()

        # The command-line client against the same service: submit --wait, then status.
        spec_file = tmp_path / "tiny.json"
        spec_file.write_text(json.dumps({**TINY, "name": "from-cli"}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
        cli_env = {**env, "GROKLAB_URL": url, "GROKLAB_TOKEN": client.headers["Authorization"].split()[-1]}
        submitted = subprocess.run(
            [sys.executable, "-m", "service.cli", "submit", str(spec_file), "--wait"],
            env=cli_env, capture_output=True, text=True, timeout=180,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert '"status": "succeeded"' in submitted.stdout
        cli_id = submitted.stdout.split()[1]
        status = subprocess.run(
            [sys.executable, "-m", "service.cli", "status", cli_id],
            env=cli_env, capture_output=True, text=True, timeout=60,
        )
        assert json.loads(status.stdout)["name"] == "from-cli"
    assert "groklab stopped" in (tmp_path / "up.log").read_text()


def test_groklab_up_trains_two_packs_at_once(tmp_path):
    """With two training processes, a sweep is cut into two packs (one per process), and the
    one worker trains both at the same time: both running, both advancing, seen through the
    API. Both processes write to the one SQLite file."""
    log_path = tmp_path / "up.log"
    with groklab_up(tmp_path, GROKLAB_WORKER_PROCESSES="2", GROKLAB_TORCH_THREADS="1",
                    GROKLAB_METRICS_FLUSH_S="0.5") as url:
        client = httpx.Client(base_url=url, headers=_auth_headers(log_path.read_text()), timeout=30)
        base = {k: v for k, v in tiny_job("both", steps=50_000, eval_every=100,
                                            checkpoint_every=10_000).items() if k != "name"}
        base["training"]["device"] = "cpu"
        r = client.post("/api/v1/sweeps", json={
            "name": "two-at-once", "base": base, "grid": {"training.seed": [0, 1, 2, 3]}})
        assert r.status_code == 201, r.text
        sweep = r.json()
        assert sweep["n_packs"] == 2  # one pack per training process, two members each
        first_of_each_pack = [sweep["experiment_ids"][0], sweep["experiment_ids"][2]]

        seen: list[list[int]] = []  # steps of both packs' first members, when both were running
        deadline = time.monotonic() + 180
        while len(seen) < 3:
            assert time.monotonic() < deadline, f"never both running: {seen}"
            jobs = [client.get(f"/api/v1/experiments/{i}").json() for i in first_of_each_pack]
            if all(j["status"] == "running" and j["progress"]["step"] > 0 for j in jobs):
                steps = [j["progress"]["step"] for j in jobs]
                if not seen or all(now > before for now, before in zip(steps, seen[-1])):
                    seen.append(steps)
            time.sleep(0.5)
        # Both advanced between three looks while both were running: trained at the same time,
        # by two training processes of the one worker.
        assert seen[-1][0] > seen[0][0] and seen[-1][1] > seen[0][1]
        workers = {client.get(f"/api/v1/experiments/{i}").json()["worker"]
                   for i in first_of_each_pack}
        assert len(workers) == 2 and all(w.startswith("embedded@") for w in workers), workers
        assert "2 training process(es) x 1 torch thread(s)" in log_path.read_text()

        assert client.post(f"/api/v1/sweeps/{sweep['id']}/cancel").status_code == 200
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/sweeps/{sweep['id']}").json()["status"] != "cancelled":
            assert time.monotonic() < deadline, "the sweep did not stop"
            time.sleep(0.5)
        assert "database is locked" not in log_path.read_text()


def _auth_headers(output: str) -> dict:
    for line in output.splitlines():
        if "admin token" in line:
            return {"Authorization": f"Bearer {line.rsplit(' ', 1)[-1].strip()}"}
    return {}
