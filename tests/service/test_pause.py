"""Pause and resume through the API (SQLite, a filesystem broker in a temporary folder): a queued
job pauses at once, a running one is asked to and its worker's store call finishes the pause;
resume queues it again with one message per job; a finished job is 409; another owner's is 404;
a sweep pauses and resumes every member; a resume counts against the active-jobs quota."""
from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from service import store
from service.access import auth
from service.app import create_app
from tests.service.specs import API, TINY
from tests.service.test_sweeps import SWEEPS, bearer, planned, submit_sweep


def submit(client) -> dict:
    r = client.post(API, json=TINY)
    assert r.status_code == 201, r.text
    return r.json()


def claim(api_sessions, job_id: str) -> list:
    """A worker claims the job (an experiment's id or a pack's): its members go running."""
    with api_sessions() as s:
        return [(m.id, m.attempt) for m in store.claim_job(s, job_id, "w1")]


def worker_pauses(api_sessions, claims: list, step: int) -> None:
    """What a worker does with a member asked to pause: its checkpoint stored, paused at step."""
    with api_sessions() as s:
        asked = store.stop_requests(s, [exp_id for exp_id, _ in claims])
        assert asked == {exp_id: "paused" for exp_id, _ in claims}
        for exp_id, attempt in claims:
            assert store.pause_member(s, exp_id, attempt, step)


# ---- one experiment ------------------------------------------------------------------------


def test_a_queued_job_pauses_at_once_and_resumes_queued_with_a_new_message(client, enqueued):
    job = submit(client)
    enqueued.clear()
    r = client.post(f"{API}/{job['id']}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused" and r.json()["pause_requested"] is False
    assert client.get(f"{API}/{job['id']}").json()["status"] == "paused"
    listed = client.get(API, params={"status": "paused"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    again = client.post(f"{API}/{job['id']}/pause")  # a paused job stays paused
    assert again.status_code == 200 and again.json()["status"] == "paused"
    assert enqueued == []  # pausing sends nothing

    r = client.post(f"{API}/{job['id']}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["attempt"] == 0
    assert enqueued == [(job["id"], "cpu")]
    twice = client.post(f"{API}/{job['id']}/resume")
    assert twice.status_code == 409 and twice.json()["status"] == "queued"
    assert "only a paused job" in twice.json()["detail"]
    assert enqueued == [(job["id"], "cpu")]


def test_a_running_job_is_asked_to_pause_and_its_worker_pauses_it(client, enqueued, api_sessions):
    job = submit(client)
    claims = claim(api_sessions, job["id"])
    enqueued.clear()
    r = client.post(f"{API}/{job['id']}/pause")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["pause_requested"] is True
    # Resumed before the worker got to it: the request is withdrawn, the job trains on.
    r = client.post(f"{API}/{job['id']}/resume")
    assert r.json()["status"] == "running" and r.json()["pause_requested"] is False
    assert enqueued == []
    with api_sessions() as s:
        assert store.stop_requests(s, [job["id"]]) == {}

    client.post(f"{API}/{job['id']}/pause")
    worker_pauses(api_sessions, claims, step=30)
    paused = client.get(f"{API}/{job['id']}").json()
    assert paused["status"] == "paused" and paused["progress"]["step"] == 30
    assert paused["worker"] is None and paused["pause_requested"] is False
    assert paused["max_attempts"] == 4  # a pause uses up none of its attempts

    r = client.post(f"{API}/{job['id']}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert r.json()["progress"]["step"] == 30  # it continues from there
    assert enqueued == [(job["id"], "cpu")]
    assert claim(api_sessions, job["id"]) == [(job["id"], 2)]


def test_a_finished_job_cannot_be_paused_or_resumed(client, api_sessions):
    job = submit(client)
    client.post(f"{API}/{job['id']}/cancel")
    for action, words in (("pause", "only a queued or running job can be paused"),
                          ("resume", "only a paused job")):
        r = client.post(f"{API}/{job['id']}/{action}")
        assert r.status_code == 409, action
        assert r.json()["status"] == "cancelled"
        assert words in r.json()["detail"] and "is cancelled" in r.json()["detail"]


def test_a_paused_job_can_be_cancelled_at_once(client):
    job = submit(client)
    client.post(f"{API}/{job['id']}/pause")
    r = client.post(f"{API}/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None


def test_pause_and_resume_need_a_write_token_of_the_owner(client, make_token):
    job = submit(client)
    bob, reader = bearer(make_token("bob", "write")), bearer(make_token("alice", "read"))
    for action in ("pause", "resume"):
        r = client.post(f"{API}/{job['id']}/{action}", headers=bob)
        assert r.status_code == 404 and job["id"] in r.json()["detail"]
        assert client.post(f"{API}/{job['id']}/{action}", headers=reader).status_code == 403
        assert client.post(f"{API}/{uuid.uuid4()}/{action}").status_code == 404
    assert client.get(f"{API}/{job['id']}").json()["status"] == "queued"  # untouched


# ---- a sweep -------------------------------------------------------------------------------


def test_pausing_a_sweep_pauses_every_member_and_resume_queues_each_pack_once(
    client, enqueued, api_sessions
):
    sweep = submit_sweep(client, pack_size=3)  # 8 members in packs of 3, 3 and 2
    assert sweep["n_packs"] == 3
    first_pack = enqueued[0][0]
    claims = claim(api_sessions, first_pack)
    enqueued.clear()

    r = client.post(f"{SWEEPS}/{sweep['id']}/pause")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "running"  # until the worker has paused its members
    assert (out["counts"]["paused"], out["counts"]["running"], out["counts"]["queued"]) == (5, 3, 0)
    for exp_id, _ in claims:
        assert client.get(f"{API}/{exp_id}").json()["pause_requested"] is True
    worker_pauses(api_sessions, claims, step=20)

    out = client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert out["status"] == "paused" and out["counts"]["paused"] == 8
    assert out["finished_at"] is None and out["progress"] == pytest.approx(3 * 20 / (8 * 60))
    listed = client.get(SWEEPS).json()["items"]
    assert [(s["id"], s["status"]) for s in listed] == [(sweep["id"], "paused")]
    members = client.get(f"{SWEEPS}/{sweep['id']}/members").json()["members"]
    assert {m["status"] for m in members} == {"paused"}
    csv_text = client.get(f"{SWEEPS}/{sweep['id']}/members", params={"format": "csv"}).text
    assert csv_text.count(",paused,") == 8
    diagram = client.get(f"{SWEEPS}/{sweep['id']}/phase-diagram",
                         params={"x": "optimizer.weight_decay"})
    assert diagram.status_code == 200 and all(c["finished"] == 0 for c in diagram.json()["cells"])
    assert client.post(f"{SWEEPS}/{sweep['id']}/pause").status_code == 200  # stays paused
    assert enqueued == []

    r = client.post(f"{SWEEPS}/{sweep['id']}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["queued"] == 8 and r.json()["counts"]["paused"] == 0
    assert r.json()["status"] == "running"  # three of its members had started
    with api_sessions() as s:
        packs = {m.pack_id for m in store.sweep_members(s, sweep["id"])}
    assert sorted(enqueued) == sorted((pack_id, "cpu") for pack_id in packs)  # once each
    again = client.post(f"{SWEEPS}/{sweep['id']}/resume")
    assert again.status_code == 409 and again.json()["status"] == "running"
    assert "no paused member" in again.json()["detail"]


def test_a_paused_sweep_can_be_cancelled_and_a_finished_one_not_paused(client, make_token):
    sweep = submit_sweep(client)
    bob = bearer(make_token("bob", "write"))
    for action in ("pause", "resume"):
        assert client.post(f"{SWEEPS}/{sweep['id']}/{action}", headers=bob).status_code == 404
    assert client.post(f"{SWEEPS}/{sweep['id']}/pause").json()["status"] == "paused"
    r = client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["counts"]["cancelled"] == 8
    for action in ("pause", "resume"):
        refused = client.post(f"{SWEEPS}/{sweep['id']}/{action}")
        assert refused.status_code == 409, action
        assert refused.json()["status"] == "cancelled"


def test_store_pauses_and_resumes_a_sweep_in_one_update_each_way(session):
    """On SQLite and PostgreSQL: queued members pause at once, running ones are asked; resume
    queues the paused ones and names each of their jobs once."""
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    spec, packs = planned({"training.seed": [0, 1, 2, 3]}, pack_size=2)
    sweep, members, jobs = store.create_sweep(session, spec, packs, lambda s: "cpu", owner)
    running = store.claim_job(session, jobs[0][0], "w1")
    assert len(running) == 2

    assert store.pause_sweep(session, sweep.id) == 4
    assert store.pause_sweep(session, sweep.id) == 0  # nothing left to change
    by_id = {m.id: m for m in store.sweep_members(session, sweep.id)}
    assert {(by_id[m.id].status, by_id[m.id].pause_requested) for m in running} == {
        ("running", True)}
    assert {by_id[m.id].status for m in members[2:]} == {"paused"}
    assert store.sweep_resumable(session, sweep.id) == (2, 2)
    for m in running:
        assert store.pause_member(session, m.id, m.attempt, step=10)
    assert store.sweep_status(session, sweep).status == "paused"

    assert store.resume_sweep(session, sweep.id) == sorted(jobs)
    assert {m.status for m in store.sweep_members(session, sweep.id)} == {"queued"}
    assert store.sweep_resumable(session, sweep.id) == (0, 0)
    assert store.resume_sweep(session, sweep.id) == []


# ---- quotas --------------------------------------------------------------------------------


@pytest.fixture
def quota_app(api_settings, enqueued):
    return create_app(api_settings.model_copy(update={"max_active_jobs_per_owner": 3}))


def test_a_paused_job_frees_its_quota_and_resuming_it_counts_again(quota_app, enqueued):
    with quota_app.state.sessions() as session:
        token = auth.create_token(session, "alice", "write", submissions_per_minute=100)[1]
    with TestClient(quota_app, raise_server_exceptions=False, headers=bearer(token)) as alice:
        jobs = [submit(alice) for _ in range(3)]
        assert alice.post(API, json=TINY).status_code == 429
        assert alice.post(f"{API}/{jobs[0]['id']}/pause").status_code == 200
        fourth = submit(alice)  # the paused job is not active
        enqueued.clear()

        refused = alice.post(f"{API}/{jobs[0]['id']}/resume")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        detail = refused.json()["detail"]
        assert "resuming adds 1" in detail and "GROKLAB_MAX_ACTIVE_JOBS_PER_OWNER" in detail
        assert alice.get(f"{API}/{jobs[0]['id']}").json()["status"] == "paused"
        assert enqueued == []

        alice.post(f"{API}/{fourth['id']}/cancel")
        assert alice.post(f"{API}/{jobs[0]['id']}/resume").json()["status"] == "queued"

        # A sweep's paused members count one each when resumed.
        for job in jobs:
            alice.post(f"{API}/{job['id']}/cancel")
        sweep = submit_sweep(alice, grid={"training.seed": [0, 1, 2]})
        assert alice.post(f"{SWEEPS}/{sweep['id']}/pause").json()["status"] == "paused"
        submit(alice)
        refused = alice.post(f"{SWEEPS}/{sweep['id']}/resume")
        assert refused.status_code == 429 and "resuming adds 3" in refused.json()["detail"]
        assert alice.get(f"{SWEEPS}/{sweep['id']}").json()["counts"]["paused"] == 3


# ---- the client and the CLI ----------------------------------------------------------------


def test_the_client_pauses_resumes_and_stops_waiting_at_a_pause(client):
    from service.client import Client, GroklabError

    groklab = Client(http=client)
    job = groklab.submit(TINY)
    assert groklab.pause(job["id"])["status"] == "paused"
    # A paused job moves only when resumed: wait() returns it rather than hang.
    assert groklab.wait(job["id"], timeout=5, progress=False)["status"] == "paused"
    assert groklab.resume(job["id"])["status"] == "queued"
    with pytest.raises(GroklabError) as refused:
        groklab.resume(job["id"])
    assert refused.value.status == 409 and "only a paused job" in refused.value.detail

    sweep = groklab.submit_sweep({"name": "s", "base": TINY, "grid": {"training.seed": [0, 1]}})
    assert groklab.pause_sweep(sweep["id"])["counts"]["paused"] == 2
    assert groklab.resume_sweep(sweep["id"])["counts"]["queued"] == 2


def test_groklab_pause_and_resume_an_experiment_or_a_sweep(client, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.cli import client as cli_client
    from service.client import Client

    monkeypatch.setattr(cli_client, "_client", lambda url: Client(http=client))
    runner = CliRunner()
    job = submit(client)
    out = runner.invoke(app, ["pause", job["id"]])
    assert out.exit_code == 0 and f"{job['id']} paused at step 0" in out.stdout
    out = runner.invoke(app, ["resume", job["id"]])
    assert out.exit_code == 0 and f"{job['id']} queued" in out.stdout
    out = runner.invoke(app, ["resume", job["id"]])
    assert out.exit_code == 1 and "409" in out.stderr and "only a paused job" in out.stderr

    sweep = submit_sweep(client, grid={"training.seed": [0, 1, 2]})
    out = runner.invoke(app, ["pause", "--sweep", sweep["id"]])
    assert out.exit_code == 0 and f"sweep {sweep['id']} paused: 3 paused" in out.stdout
    out = runner.invoke(app, ["resume", sweep["id"], "--sweep"])
    assert out.exit_code == 0 and "3 queued" in out.stdout
