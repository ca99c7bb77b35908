"""Analyses on request are metered: an owner may have GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER of
them waiting for a worker (checkpoint analyses and progress measures together); one more is a
429 with Retry-After, asking again about a pending one is not, and another owner has a limit
of its own. They wait on the analysis queue, never on the training queues."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service import store
from service.access import auth
from service.app import create_app
from service.contract.models import AnalysisCache
from tests.service.blobs import checkpoint_bytes
from tests.service.specs import API, TINY

LIMIT = 2


@pytest.fixture
def analysis_app(api_settings, enqueued):
    return create_app(api_settings.model_copy(update={"max_pending_analyses_per_owner": LIMIT}))


def _client(app, owner: str, scope: str = "write") -> TestClient:
    with app.state.sessions() as session:
        token = auth.create_token(session, owner, scope)[1]
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


def with_checkpoint(app, client: TestClient, step: int = 20) -> str:
    experiment_id = client.post(API, json=TINY).json()["id"]
    with app.state.sessions() as s:
        store.add_checkpoint(s, experiment_id, step, checkpoint_bytes(b"at %d" % step), {})
    return experiment_id


def test_pending_analyses_per_owner_are_capped_and_queued_on_the_analysis_queue(analysis_app,
                                                                                 enqueued):
    with _client(analysis_app, "alice") as writer, _client(analysis_app, "alice", "read") as alice:
        ids = [with_checkpoint(analysis_app, writer) for _ in range(3)]
        enqueued.clear()  # the submissions' own messages
        first = alice.get(f"{API}/{ids[0]}/progress-measures")
        second = alice.get(f"{API}/{ids[1]}/checkpoints/20/analysis")
        assert (first.status_code, second.status_code) == (202, 202)
        refused = alice.get(f"{API}/{ids[2]}/progress-measures")
        assert refused.status_code == 429, refused.text
        assert "GROKLAB_MAX_PENDING_ANALYSES_PER_OWNER" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        refused = alice.get(f"{API}/{ids[2]}/checkpoints/20/analysis")
        assert refused.status_code == 429
        # Asking again about a pending one adds nothing: still 202, not queued twice.
        assert alice.get(f"{API}/{ids[0]}/progress-measures").status_code == 202
        assert alice.get(f"{API}/{ids[1]}/checkpoints/20/analysis").status_code == 202
    assert enqueued == [(ids[0], "analysis"), (ids[1], "analysis")]

    with _client(analysis_app, "bob") as bob:  # another owner is not held up by alice's
        other = with_checkpoint(analysis_app, bob)
        assert bob.get(f"{API}/{other}/progress-measures").status_code == 202

    with analysis_app.state.sessions() as s:  # one of alice's is done: a slot is free again
        store.put_progress_measures(s, ids[0], 20, {"final_step": 20, "key_frequencies": {},
                                                    "series": []})
    with _client(analysis_app, "alice", "read") as alice:
        assert alice.get(f"{API}/{ids[2]}/progress-measures").status_code == 202


def test_workers_take_analyses_in_fair_order_across_owners(analysis_app, enqueued):
    """alice asks for two analyses, then bob for one: a worker woken by alice's second message
    takes bob's (the owner with none running) before it; each is taken once."""
    from worker.analysis_queue import run_next_analysis

    with _client(analysis_app, "alice") as alice, _client(analysis_app, "bob") as bob:
        a1, a2 = with_checkpoint(analysis_app, alice), with_checkpoint(analysis_app, alice)
        b1 = with_checkpoint(analysis_app, bob)
        assert alice.get(f"{API}/{a1}/checkpoints/20/analysis").status_code == 202
        assert alice.get(f"{API}/{a2}/progress-measures").status_code == 202
        assert bob.get(f"{API}/{b1}/checkpoints/20/analysis").status_code == 202
    settings = analysis_app.state.settings
    with analysis_app.state.sessions() as s:
        first = store.next_fair_analysis(s)
        assert (first.experiment_id, first.kind) == (a1, store.CHECKPOINT_ANALYSIS)
        assert store.claim_analysis(s, first)  # a worker is on alice's first one
        assert not store.claim_analysis(s, first)  # and no second worker gets it
        assert store.next_fair_analysis(s).experiment_id == b1  # bob's, though it came last
    # Workers woken by the remaining messages: bob's, then alice's second (no checkpoint holds
    # a real model here, so the computations fail, each stored with its reason).
    taken = [run_next_analysis("test", settings) for _ in range(3)]
    assert [t.split(":")[0] for t in taken] == [
        f"checkpoint {b1} 20", f"progress-measures {a2} 20", "nothing waiting"]
    with analysis_app.state.sessions() as s:  # each ran once, to its end (failed, with why)
        assert s.get(AnalysisCache, (b1, 20, "fourier")).status == "failed"
        assert store.get_progress_measures(s, a2).status == "failed"
        assert s.get(AnalysisCache, (a1, 20, "fourier")).status == "running"  # the first worker's still
