"""GET .../progress-measures: the Nanda et al. 2023 measures at every checkpoint with the key
frequencies of the final one, computed once by a worker (here its task function, in-process,
against the API's database), a failure stored with its reason; and the request store on both
backends."""
from __future__ import annotations

import pytest

from service import store
from service.contract.spec import ExperimentSpec
from tests.service.blobs import checkpoint_bytes, overwrite_checkpoint_bytes
from tests.service.specs import API, TINY

STEPS = 60
CHECKPOINT_STEPS = [20, 40, 60]


def trained_experiment(client, api_sessions) -> str:
    """An experiment submitted through the API and trained in-process the way the worker
    records it: metrics (with the analysis series every 20 steps) and checkpoints every 20."""
    from worker.analysis.callback import analysis_callback
    from worker.engine.train import Trainer

    body = {**TINY, "training": {"steps": STEPS, "eval_every": 10, "checkpoint_every": 20,
                                 "device": "cpu"}, "analysis": {"every": 20}}
    r = client.post(API, json=body)
    assert r.status_code == 201, r.text
    experiment_id = r.json()["id"]
    with api_sessions() as s:
        spec = ExperimentSpec.model_validate(store.get_experiment(s, experiment_id).spec)
    rows: list[dict] = []

    def on_checkpoint(step: int, blob: bytes, meta: dict) -> None:
        with api_sessions() as s:
            store.add_checkpoint(s, experiment_id, step, blob, meta)

    Trainer(spec).run(on_metrics=rows.extend, on_checkpoint=on_checkpoint,
                      on_analysis=analysis_callback(spec))
    with api_sessions() as s:
        store.ingest_metrics(s, experiment_id, rows)
    return experiment_id


def measures_url(experiment_id: str) -> str:
    return f"{API}/{experiment_id}/progress-measures"


def compute(experiment_id: str, final_step: int, api_settings) -> str:
    from worker.progress_measures import compute_progress_measures

    return compute_progress_measures(experiment_id, final_step, settings=api_settings)


def test_pending_then_computed_once_then_served_from_the_table(client, api_sessions, api_settings, enqueued):
    experiment_id = trained_experiment(client, api_sessions)
    enqueued.clear()  # the submit's own message

    first = client.get(measures_url(experiment_id), params={"key_freqs": "final"})
    assert first.status_code == 202, first.text
    assert first.headers["retry-after"] == "2"
    assert "step 60" in first.json()["detail"]
    again = client.get(measures_url(experiment_id))
    assert again.status_code == 202
    assert enqueued == [(experiment_id, "analysis")]  # asked twice, enqueued once (analysis queue)

    assert compute(experiment_id, 60, api_settings) == "computed"
    assert compute(experiment_id, 60, api_settings) == "not-requested"  # a redelivery: no work
    r = client.get(measures_url(experiment_id))
    assert r.status_code == 200, r.text
    body = r.json()
    assert enqueued == [(experiment_id, "analysis")]
    assert body["final_step"] == 60 and body["key_freqs"] == "final"

    # The key frequencies are those of the final checkpoint, and they are fixed: at step 60
    # the worker's own analysis (which finds them afresh) gives the same measures.
    from worker.analysis.fixed_keys import key_frequencies_of
    from worker.engine.train import Trainer

    with api_sessions() as s:
        spec = ExperimentSpec.model_validate(store.get_experiment(s, experiment_id).spec)
        final = Trainer.from_checkpoint(spec, store.load_checkpoint_verified(s, experiment_id, 60))
        metrics = store.query_metrics(
            s, experiment_id, max_points=None,
            names=["weight_norm", "restricted_loss", "excluded_loss", "gini_embed", "gini_unembed"],
        )
    assert body["key_frequencies"] == {"0": key_frequencies_of(final.model, spec.task.p, 1)[0]}

    series = {(s["name"], s["member"]): s for s in body["series"]}
    assert {name for name, _ in series} == {
        "restricted_loss", "excluded_loss", "full_loss", "gini_embed", "gini_unembed",
        "key_freq_energy", "frac_neurons_explained", "weight_norm",
    }
    for s in body["series"]:
        assert s["steps"] == CHECKPOINT_STEPS and len(s["values"]) == 3, s["name"]
    recorded = {m["name"]: dict(zip(m["steps"], m["values"])) for m in metrics["series"]}
    for name in ("restricted_loss", "excluded_loss", "gini_embed", "gini_unembed"):
        assert series[(name, 0)]["values"][-1] == pytest.approx(recorded[name][60], rel=1e-6), name
    # the weight norm of each checkpoint is the one the evaluation of that step recorded
    assert series[("weight_norm", 0)]["values"] == pytest.approx(
        [recorded["weight_norm"][s] for s in CHECKPOINT_STEPS]
    )
    # the phases, read from these series and the evaluations (60 steps: memorised, no more)
    assert set(body["phases"]) >= {"memorization", "circuit_formation", "cleanup", "members"}


def test_a_newer_checkpoint_makes_the_measures_out_of_date(client, api_sessions, api_settings, enqueued):
    experiment_id = trained_experiment(client, api_sessions)
    enqueued.clear()  # the submit's own message
    assert client.get(measures_url(experiment_id)).status_code == 202
    assert compute(experiment_id, 60, api_settings) == "computed"
    assert client.get(measures_url(experiment_id)).status_code == 200
    with api_sessions() as s:
        store.add_checkpoint(s, experiment_id, 80, checkpoint_bytes(b"later"), {})
    r = client.get(measures_url(experiment_id))
    assert r.status_code == 202 and "step 80" in r.json()["detail"]
    assert enqueued == [(experiment_id, "analysis")] * 2
    # a late result for the old step never overwrites the newer request
    with api_sessions() as s:
        assert not store.put_progress_measures(s, experiment_id, 60, {"series": []})
        assert store.get_progress_measures(s, experiment_id).status == "pending"


def test_a_failure_is_stored_with_its_reason(client, api_sessions, api_settings, enqueued):
    experiment_id = trained_experiment(client, api_sessions)
    enqueued.clear()  # the submit's own message
    with api_sessions() as s:
        overwrite_checkpoint_bytes(s, experiment_id, 40, b"flipped bytes")
    assert client.get(measures_url(experiment_id)).status_code == 202
    assert compute(experiment_id, 60, api_settings) == "failed"
    for _ in range(2):
        r = client.get(measures_url(experiment_id))
        assert r.status_code == 409, r.text
        assert "CheckpointCorrupt" in r.json()["detail"] and "40" in r.json()["detail"]
    assert enqueued == [(experiment_id, "analysis")]  # a stored failure is not retried


def test_s5_is_refused_with_the_reason(client, enqueued):
    body = {**TINY, "task": {"kind": "permutation", "op": "x*y", "p": None}}
    experiment_id = client.post(API, json=body).json()["id"]
    enqueued.clear()  # the submit's own message
    r = client.get(measures_url(experiment_id))
    assert r.status_code == 422
    assert "S5" in r.json()["detail"]
    assert enqueued == []
    analysis = client.get(f"{API}/{experiment_id}/analysis").json()
    assert analysis["phases"] is None


def test_no_checkpoint_yet_and_unknown_key_freqs(client, enqueued):
    experiment_id = client.post(API, json=TINY).json()["id"]
    enqueued.clear()  # the submit's own message
    r = client.get(measures_url(experiment_id))
    assert r.status_code == 409 and "no checkpoint" in r.json()["detail"]
    r = client.get(measures_url(experiment_id), params={"key_freqs": "per_step"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "key_freqs"]
    assert enqueued == []


def test_a_broker_failure_is_a_503_and_the_next_request_tries_again(client, api_sessions, monkeypatch, enqueued):
    from service.infra import queueing

    experiment_id = client.post(API, json=TINY).json()["id"]
    enqueued.clear()  # the submit's own message
    with api_sessions() as s:
        store.add_checkpoint(s, experiment_id, 20, checkpoint_bytes(), {})

    def broker_down(*args, **kwargs):
        raise ConnectionError("redis is down")

    with monkeypatch.context() as patched:
        patched.setattr(queueing, "enqueue_progress_measures", broker_down)
        r = client.get(measures_url(experiment_id))
    assert r.status_code == 503 and "redis is down" in r.json()["detail"]
    assert client.get(measures_url(experiment_id)).status_code == 202
    assert enqueued == [(experiment_id, "analysis")]


def test_the_analysis_shows_the_phases_of_the_recorded_series(client, api_sessions):
    experiment_id = trained_experiment(client, api_sessions)
    phases = client.get(f"{API}/{experiment_id}/analysis").json()["phases"]
    assert phases is not None and phases["members"][0]["member"] == 0
    assert phases["thresholds"]["test_loss_floor"] == 0.01


# ---- the request store, on SQLite and PostgreSQL ------------------------------------------


def test_requests_are_deduplicated_retried_when_stale_and_finished_once(session):
    from tests.builders import tiny_spec

    experiment_id = store.create_experiment(session, tiny_spec(), "cpu").id
    assert store.get_progress_measures(session, experiment_id) is None
    assert store.request_progress_measures(session, experiment_id, 20)
    assert not store.request_progress_measures(session, experiment_id, 20)
    # pending too long: its message may be lost, so it is sent again
    assert store.request_progress_measures(session, experiment_id, 20, retry_after_s=0)
    assert store.put_progress_measures(session, experiment_id, 20, {"series": []})
    assert not store.put_progress_measures(session, experiment_id, 20, {"series": [1]})
    row = store.get_progress_measures(session, experiment_id)
    assert (row.status, row.data, row.finished_at is not None) == ("done", {"series": []}, True)
    assert not store.request_progress_measures(session, experiment_id, 20, retry_after_s=0)
    # a newer checkpoint: pending again, for the new step only
    assert store.request_progress_measures(session, experiment_id, 40)
    assert not store.fail_progress_measures(session, experiment_id, 20, "old")
    assert store.fail_progress_measures(session, experiment_id, 40, "ValueError: why")
    row = store.get_progress_measures(session, experiment_id)
    assert (row.status, row.error, row.data) == ("failed", "ValueError: why", None)
    store.withdraw_progress_measures(session, experiment_id, 40)  # only a pending one goes
    assert store.get_progress_measures(session, experiment_id).status == "failed"


def test_a_run_with_analysis_has_nanda_progress_in_its_summary(client, api_sessions):
    """The summary a finished run stores: its progress_summary beside the grokking summary (the
    reproductions' claims read it), from the measures its analysis recorded."""
    from service.store.summary import experiment_summary

    experiment_id = trained_experiment(client, api_sessions)
    with api_sessions() as s:
        summary = experiment_summary(s, experiment_id)
        counts = store.query_metrics(s, experiment_id, names=["key_freq_count"], max_points=None)
    last_count = counts["series"][0]["values"][-1]
    member = summary["members"][0]
    assert member["key_freq_count"] == summary["key_freq_count"] == int(last_count)
    for name in ("circuit_formation_step", "cleanup_step", "restricted_loss_fall_step",
                 "test_loss_fall_step", "excluded_loss_rise"):
        assert name in member
    assert "phases" not in member
