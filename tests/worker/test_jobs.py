"""One job path: a single experiment is a pack of one, and every rule that holds for a pack's
member holds for it (worker/jobs.py, worker/recorder.py)."""
from __future__ import annotations

from sqlalchemy.exc import OperationalError

from service import store
from tests.service.specs import API, TINY
from worker.jobs import run_job

DIVERGING = {"optimizer": {"name": "sgd", "lr": 10.0, "weight_decay": 0, "warmup_steps": 0},
             "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32, "init_scale": 30.0}}


def metric_points(client, experiment_id: str) -> dict[tuple[str, int, int], float]:
    series = client.get(f"{API}/{experiment_id}/metrics").json()["series"]
    return {(s["name"], s["member"], step): v for s in series for step, v in zip(s["steps"], s["values"])}


def test_a_single_run_whose_loss_becomes_nan_fails_with_the_reason(client, api_settings):
    job = client.post(API, json={**TINY, **DIVERGING, "name": "nan"}).json()
    assert run_job(job["id"], "test-worker", settings=api_settings) == "failed"
    failed = client.get(f"{API}/{job['id']}").json()
    assert failed["status"] == "failed"
    assert "NaN or infinite" in failed["error"] and "optimizer.lr" in failed["error"]
    assert failed["summary"]["stopped"] == "nonfinite"
    assert failed["progress"]["step"] < 60  # it left at the first evaluation that saw it
    steps = [c["step"] for c in client.get(f"{API}/{job['id']}/checkpoints").json()]
    assert steps == [failed["progress"]["step"]]  # its last checkpoint, kept for a post-mortem


def test_a_pack_member_that_diverges_fails_alone_with_the_same_reason(client, api_settings):
    r = client.post("/api/v1/sweeps", json={
        "base": {**TINY, "optimizer": DIVERGING["optimizer"], "analysis": {"every": None}},
        "grid": {"model.init_scale": [1.0, 30.0], "optimizer.lr": [0.05, 10.0]},
    })
    assert r.status_code == 201, r.text
    ids = r.json()["experiment_ids"]
    with client.app.state.sessions() as s:
        packs = sorted({store.get_experiment(s, i).pack_id for i in ids})
    for pack_id in packs:  # however the members were packed, each pack runs to its end
        assert run_job(pack_id, "test-worker", settings=api_settings) == "succeeded"
    jobs = {(j["spec"]["model"]["init_scale"], j["spec"]["optimizer"]["lr"]): j
            for j in (client.get(f"{API}/{i}").json() for i in ids)}
    assert jobs[1.0, 0.05]["status"] == "succeeded" and jobs[1.0, 0.05]["progress"]["step"] == 60
    diverged = jobs[30.0, 10.0]
    assert diverged["status"] == "failed" and "NaN or infinite" in diverged["error"]
    assert "the other members of its job trained on" in diverged["error"]
    assert diverged["summary"]["stopped"] == "nonfinite"


def test_an_ensemble_experiment_stores_each_row_as_its_member(client, api_settings):
    body = {**TINY, "name": "ensemble", "ensemble": {"size": 2, "weight_decay": [0.0, 1.0]},
            "analysis": {"every": 30}}
    job = client.post(API, json=body).json()
    assert run_job(job["id"], "test-worker", settings=api_settings) == "succeeded"
    done = client.get(f"{API}/{job['id']}").json()
    assert done["status"] == "succeeded" and done["summary"]["stopped"] == "completed"
    points = metric_points(client, job["id"])
    assert {m for _, m, _ in points} == {0, 1}
    assert points["val_acc", 0, 60] != points["val_acc", 1, 60] or points["weight_norm", 0, 60] != points["weight_norm", 1, 60]
    with client.app.state.sessions() as s:
        analysis = store.get_cached_analysis(s, job["id"], 60)
    assert len(analysis["members"]) == 2  # both rows' measures, under the one experiment


def test_a_cancelled_single_run_leaves_with_a_last_evaluation_and_checkpoint(client, api_settings):
    import threading
    import time

    body = {**TINY, "name": "cancel", "training": {"steps": 20000, "checkpoint_every": 10000},
            "analysis": {"every": None}}
    job = client.post(API, json=body).json()
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(
        run_job(job["id"], "test-worker", settings=api_settings)))
    worker.start()
    deadline = time.monotonic() + 60
    while client.get(f"{API}/{job['id']}").json()["progress"]["step"] < 5:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    assert client.post(f"{API}/{job['id']}/cancel").status_code == 200
    worker.join(timeout=60)
    assert outcome == ["cancelled"]
    done = client.get(f"{API}/{job['id']}").json()
    assert done["status"] == "cancelled" and done["summary"]["stopped"] == "cancelled"
    last = done["progress"]["step"]
    assert 5 <= last < 20000
    assert [c["step"] for c in client.get(f"{API}/{job['id']}/checkpoints").json()] == [last]
    assert max(step for _, _, step in metric_points(client, job["id"])) == last


class FlakySessions:
    """A session factory whose first `failures` sessions fail as a database that is down."""

    def __init__(self, sessions, failures: int) -> None:
        self.sessions, self.failures, self.calls = sessions, failures, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("SELECT 1", {}, ConnectionError("the database is down"))
        return self.sessions()


def test_the_recorder_keeps_training_through_an_outage_and_retries_measures(client):
    """One outage policy for every job: metric rows wait in the buffer (the engine is never
    blocked), and a member's analysis is retried until the database is back."""
    from worker.recorder import JobRecorder

    ids = [client.post(API, json={**TINY, "name": f"o{i}"}).json()["id"] for i in range(2)]
    with client.app.state.sessions() as s:
        claims = [(i, store.claim_experiment(s, i, "w").attempt) for i in ids]
    sessions = FlakySessions(client.app.state.sessions, failures=3)
    now = [0.0]
    recorder = JobRecorder(sessions, claims, flush_every_s=1.0, clock=lambda: now[0])
    rows = [{"step": 1, "member": m, "name": "train_loss", "value": 1.0} for m in (0, 1)]
    now[0] = 2.0
    recorder.on_metrics(rows)  # the flush fails: no exception, the rows stay buffered
    assert sum(map(len, recorder._rows.values())) == 2
    recorder.trainer = type("T", (), {"members": [0, 1]})()
    recorder.store_measures(0, [{"m": 0}, {"m": 1}])  # retried through the rest of the outage
    recorder.flush()
    with client.app.state.sessions() as s:
        assert [store.get_cached_analysis(s, i, 0)["members"] for i in ids] == [[{"m": 0}], [{"m": 1}]]
    for i in ids:
        assert metric_points(client, i) == {("train_loss", 0, 1): 1.0}
