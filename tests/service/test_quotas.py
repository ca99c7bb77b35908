"""Per-owner quotas (429 + Retry-After, the limit named) and budgets as products (422 at the
field), through the API; and fair order of the queue, on SQLite and PostgreSQL."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from service import store
from service.access import auth
from service.app import create_app
from service.contract.models import Experiment, utcnow
from tests.builders import tiny_spec
from tests.service.specs import API, TINY

SWEEPS = "/api/v1/sweeps"


def _client(api_app, owner: str = "alice", **overrides) -> TestClient:
    with api_app.state.sessions() as session:
        token = auth.create_token(session, owner, "write", **overrides)[1]
    return TestClient(api_app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def quota_app(api_settings, enqueued):
    settings = api_settings.model_copy(update={"max_active_jobs_per_owner": 3,
                                               "submissions_per_minute": 5})
    return create_app(settings)


def test_over_the_active_job_limit_is_429_with_retry_after(quota_app):
    with _client(quota_app) as alice, _client(quota_app, "bob") as bob:
        for _ in range(3):
            assert alice.post(API, json=TINY).status_code == 201
        refused = alice.post(API, json=TINY)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER" in refused.json()["detail"]
        assert "3" in refused.json()["detail"]
        # Another owner has a quota of its own.
        assert bob.post(API, json=TINY).status_code == 201
        # A sweep's members count: 2 members over 0 free slots of bob's... 2 of his 2 left fit.
        sweep = {"name": "s", "base": TINY, "grid": {"optimizer.weight_decay": [0.0, 1.0, 2.0]}}
        assert bob.post(SWEEPS, json=sweep).status_code == 429
        first = alice.get(API).json()["items"][0]["id"]
        assert alice.post(f"{API}/{first}/cancel").status_code == 200
        assert alice.post(API, json=TINY).status_code == 201  # a slot is free again


def test_over_the_submission_rate_is_429_until_a_minute_has_passed(quota_app):
    with _client(quota_app, max_active_jobs=100) as alice:
        for _ in range(5):
            assert alice.post(API, json=TINY).status_code == 201
        refused = alice.post(API, json=TINY)
        assert refused.status_code == 429
        assert "GROKLAB_SUBMISSIONS_PER_MINUTE" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        with quota_app.state.sessions() as s:  # a minute later
            for e in s.query(Experiment):
                e.created_at = utcnow() - timedelta(seconds=61)
            s.commit()
        assert alice.post(API, json=TINY).status_code == 201


def test_a_token_overrides_the_owner_quotas(quota_app):
    with _client(quota_app, max_active_jobs=1, submissions_per_minute=100) as one:
        assert one.post(API, json=TINY).status_code == 201
        assert one.post(API, json=TINY).status_code == 429
    with _client(quota_app, "carol", max_active_jobs=10, submissions_per_minute=100) as many:
        for _ in range(6):  # over the settings' 3 active and 5 per minute
            assert many.post(API, json=TINY).status_code == 201
    with quota_app.state.sessions() as session:
        admin = auth.create_token(session, "ops", "admin")[1]
    with TestClient(quota_app, headers={"Authorization": f"Bearer {admin}"}) as operator:
        for _ in range(6):  # an admin token has no quota unless given one
            assert operator.post(API, json=TINY).status_code == 201
    big = {**TINY, "ensemble": {"size": 64}, "training": {"steps": 20000}}
    with _client(quota_app, "dave", max_compute=1e9) as small:
        refused = small.post(API, json=big)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "training", "steps"]
    with _client(quota_app, "erin", max_compute=1e20) as large:
        bigger = {**big, "training": {"steps": 10**6, "checkpoint_every": 1000},
                  "analysis": {"every": None}}
        assert large.post(API, json=bigger).status_code == 201


# (body overrides, the loc of the refusal, a word of its message)
OVER_BUDGET = [
    ({"ensemble": {"size": 256}, "preset": "nanda2023", "training": {"steps": 1_000_000},
      "model": {"d_model": 128, "n_heads": 4, "d_mlp": 512}},
     ["body", "training", "steps"], "GROKLAB_MAX_COMPUTE_PER_JOB"),
    ({"training": {"steps": 100_000, "checkpoint_every": 1}},
     ["body", "training", "checkpoint_every"], "GROKLAB_MAX_CHECKPOINTS_PER_JOB"),
    ({"training": {"steps": 1_000_000, "eval_every": 1, "checkpoint_every": 1000}},
     ["body", "training", "eval_every"], "GROKLAB_MAX_EVALS_PER_JOB"),
    ({"training": {"steps": 100_000}, "analysis": {"every": 1}},
     ["body", "analysis", "every"], "GROKLAB_MAX_ANALYSES_PER_JOB"),
    ({"preset": "ci-small", "model": {"d_model": 512, "n_heads": 8, "d_mlp": 4096},
      "ensemble": {"size": 256}, "training": {"steps": 100}},
     ["body", "ensemble", "size"], "GROKLAB_MAX_CHECKPOINT_BYTES"),
    ({"optimizer": {"grad_filter": {"kind": "ma", "window": 10000}}, "model": {"d_model": 128,
      "n_heads": 4, "d_mlp": 512}, "ensemble": {"size": 32}, "training": {"steps": 100}},
     ["body", "optimizer", "grad_filter", "window"], "GROKLAB_MAX_GRAD_FILTER_BYTES"),
    ({"task": {"p": 509}, "ensemble": {"size": 32}, "training": {"steps": 100},
      "model": {"d_model": 128, "n_heads": 4, "d_mlp": 512},
      "analysis": {"every": 50}},
     ["body", "task", "p"], "GROKLAB_MAX_ANALYSIS_BYTES"),
]


@pytest.mark.parametrize("overrides, loc, setting", OVER_BUDGET,
                         ids=[case[2].lower()[8:] for case in OVER_BUDGET])
def test_each_budget_is_refused_at_its_field(client, overrides, loc, setting):
    response = client.post(API, json={**TINY, **overrides})
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert tuple(loc) in errors, errors
    assert setting in errors[tuple(loc)] and "at most" in errors[tuple(loc)]


def test_a_sweep_member_over_budget_is_refused_at_its_axis(client):
    sweep = {"name": "s", "base": {**TINY, "training": {"steps": 100_000}},
             "grid": {"training.checkpoint_every": [1000, 1]}}
    response = client.post(SWEEPS, json=sweep)
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert ["body", "grid", "training.checkpoint_every", 1] in locs, locs


@pytest.mark.parametrize("preset", ["nanda2023", "power2022", "ci-small", "grokfast2024",
                                    "prieto2025"])
def test_the_presets_are_accepted_even_at_the_largest_ensemble(client, preset):
    response = client.post(API, json={"name": preset, "preset": preset,
                                      "ensemble": {"size": 256}})
    assert response.status_code == 201, response.text


def _names() -> tuple[str, str, str]:
    """A queue and two owners of this test alone (the backend's database is shared)."""
    tag = uuid.uuid4().hex[:8]
    return f"q-{tag}", f"a-{tag}", f"b-{tag}"


def test_fair_order_serves_a_second_owner_before_the_first_owners_backlog(session):
    """Owner A queues many, owner B one after them: a worker (taking the fair next job each
    time) runs A's first job, then B's, then A's others."""
    spec = tiny_spec()
    queue, a, b = _names()
    a_jobs = [store.create_experiment(session, spec, queue, owner=a).id for _ in range(5)]
    b_job = store.create_experiment(session, spec, queue, owner=b).id
    order = []
    for _ in range(6):
        job = store.next_fair_job(session, queue)
        claimed = store.claim_experiment(session, job, "w")
        assert claimed is not None
        order.append(job)
        store.finish_experiment(session, job, claimed.attempt, "succeeded")
    assert order[:2] == [a_jobs[0], b_job]
    assert order[2:] == a_jobs[1:]
    assert store.next_fair_job(session, queue) is None


def test_fair_order_prefers_the_owner_with_fewer_running_jobs(session):
    spec = tiny_spec()
    queue, a, b = _names()
    a1, a2 = (store.create_experiment(session, spec, queue, owner=a).id for _ in range(2))
    b1 = store.create_experiment(session, spec, queue, owner=b).id
    store.create_experiment(session, spec, queue + "-other", owner=b)  # another queue
    assert store.claim_experiment(session, a1, "w1") is not None  # A has one running
    assert store.next_fair_job(session, queue) == b1
    assert store.fair_queue(session, queue, 5) == [b1, a2]


def test_a_job_past_its_time_limit_fails_with_the_reason(client, api_settings):
    from worker.jobs import run_job

    job = client.post(API, json={**TINY, "analysis": {"every": None}}).json()
    settings = api_settings.model_copy(update={"time_limit_floor_s": 0.0,
                                               "time_limit_s_per_compute": 1e-30})
    assert run_job(job["id"], "test-worker", settings=settings) == "failed"
    failed = client.get(f"{API}/{job['id']}").json()
    assert failed["status"] == "failed"
    assert "time limit" in failed["error"] and "GROKLAB_TIME_LIMIT_FLOOR_S" in failed["error"]


def test_a_pack_past_its_time_limit_fails_every_member_with_the_reason(client, api_settings):
    from worker.jobs import run_job

    r = client.post("/api/v1/sweeps", json={
        "base": {**TINY, "analysis": {"every": None}}, "grid": {"training.seed": [0, 1]},
        "pack_size": 2,  # one pack of both, whatever the worker plan
    })
    assert r.status_code == 201, r.text
    ids = r.json()["experiment_ids"]
    with client.app.state.sessions() as s:
        pack_id = store.get_experiment(s, ids[0]).pack_id
    settings = api_settings.model_copy(update={"time_limit_floor_s": 0.0,
                                               "time_limit_s_per_compute": 1e-30})
    assert run_job(pack_id, "test-worker", settings=settings) == "failed"
    for experiment_id in ids:
        failed = client.get(f"{API}/{experiment_id}").json()
        assert failed["status"] == "failed"
        assert "time limit" in failed["error"]


def test_the_time_limit_counts_every_attempt_not_only_the_last(client, api_settings):
    from worker.jobs import run_job
    from worker.recorder import JobRecorder

    job = client.post(API, json={**TINY, "analysis": {"every": None}}).json()
    sessions = client.app.state.sessions
    now = [100.0]
    with sessions() as s:
        (member,) = store.claim_job(s, job["id"], "lost-worker")
    # The first attempt's heartbeats add the time it ran: 1800 s, then 1200 s more.
    recorder = JobRecorder(sessions, [(member.id, member.attempt)], clock=lambda: now[0])
    for ran in (1800.0, 1200.0):
        now[0] += ran
        recorder.beat()
    with sessions() as s:
        assert store.get_experiment(s, job["id"]).run_s == pytest.approx(3000.0)
        requeued, _ = store.reap_stale_jobs(s, stale_after_s=-1)  # its worker is lost
    assert requeued == [job["id"]]
    now[0] += 500.0
    recorder.beat()  # a beat of the lost attempt adds nothing to the next one's
    with sessions() as s:
        assert store.get_experiment(s, job["id"]).run_s == pytest.approx(3000.0)

    # 3000 s of a 3000 s limit are spent: the second attempt fails at once, not 3000 s later.
    settings = api_settings.model_copy(update={"time_limit_floor_s": 3000.0,
                                               "time_limit_s_per_compute": 0.0})
    assert run_job(job["id"], "test-worker", settings=settings) == "failed"
    failed = client.get(f"{API}/{job['id']}").json()
    assert failed["attempt"] == 2
    assert "time limit" in failed["error"] and "all its attempts" in failed["error"]
