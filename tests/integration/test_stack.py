"""End to end on the real stack: PostgreSQL, Redis, a uvicorn API and a celery worker process."""
from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import pytest
import redis

from tests.builders import tiny_job
from tests.integration.conftest import wait_for_status

pytestmark = pytest.mark.integration

# A job that runs long enough to be cancelled mid-run, on a tiny model.
# (1,666 checkpoints at most: within GROKLAB_MAX_CHECKPOINTS_PER_JOB.)
LONG_TINY = tiny_job("long-tiny", steps=500000, eval_every=50, checkpoint_every=300)


def first_step_at(series: dict, threshold: float) -> int | None:
    for step, value in zip(series["steps"], series["values"]):
        if value >= threshold:
            return step
    return None


def series_by_name(payload: dict) -> dict[str, dict]:
    return {s["name"]: s for s in payload["series"] if s.get("member", 0) == 0}


def test_ci_small_succeeds_through_the_stack(grokked_run):
    assert grokked_run["status"] == "succeeded", grokked_run.get("error")
    assert grokked_run["attempt"] == 1
    progress = grokked_run["progress"]
    assert progress["step"] == progress["total_steps"] == grokked_run["spec"]["training"]["steps"]


def test_metrics_show_memorisation_long_before_generalisation(stack, grokked_run):
    r = stack.client.get(
        f"/api/v1/experiments/{grokked_run['id']}/metrics", params={"names": "train_acc,val_acc"}
    )
    assert r.status_code == 200, r.text
    series = series_by_name(r.json())
    memorised = first_step_at(series["train_acc"], 0.99)
    generalised = first_step_at(series["val_acc"], 0.99)
    assert memorised is not None and generalised is not None
    assert generalised >= 5 * memorised
    summary = grokked_run["summary"]
    assert summary["memorization_step"] == memorised
    assert summary["generalization_step"] == generalised


def test_metric_points_are_not_duplicated(stack, grokked_run):
    payload = stack.client.get(f"/api/v1/experiments/{grokked_run['id']}/metrics").json()
    for s in payload["series"]:
        assert len(s["steps"]) == len(set(s["steps"])), s["name"]
        assert s["steps"] == sorted(s["steps"])


def test_checkpoint_downloads_verifies_and_loads_into_the_engine(stack, grokked_run):
    from service.contract.spec import ExperimentSpec
    from worker.engine.train import Trainer

    listing = stack.client.get(f"/api/v1/experiments/{grokked_run['id']}/checkpoints").json()
    steps = [c["step"] for c in listing]
    final = grokked_run["spec"]["training"]["steps"]
    assert final in steps
    entry = next(c for c in listing if c["step"] == final)
    r = stack.client.get(f"/api/v1/experiments/{grokked_run['id']}/checkpoints/{final}")
    assert r.status_code == 200
    digest = hashlib.sha256(r.content).hexdigest()
    assert digest == entry["sha256"] == r.headers["x-checksum-sha256"]
    assert len(r.content) == entry["size"]

    trainer = Trainer.from_checkpoint(ExperimentSpec.model_validate(grokked_run["spec"]), r.content)
    assert trainer.step == final
    assert trainer.evaluate()[0]["val_acc"] >= 0.99


def test_cancel_queued_and_running(stack):
    long = stack.client.post("/api/v1/experiments", json=LONG_TINY).json()
    wait_for_status(stack.client, long["id"], statuses=("running",), timeout=120)
    # The one worker is busy: this one stays queued.
    queued = stack.client.post("/api/v1/experiments", json={**LONG_TINY, "name": "queued"}).json()
    r = stack.client.post(f"/api/v1/experiments/{queued['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    # Let the running job get past a checkpoint, then cancel it.
    deadline = time.monotonic() + 60
    while not stack.client.get(f"/api/v1/experiments/{long['id']}/checkpoints").json():
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.3)
    asked = datetime.now(timezone.utc)
    r = stack.client.post(f"/api/v1/experiments/{long['id']}/cancel")
    assert r.status_code == 200, r.text
    done = wait_for_status(stack.client, long["id"], timeout=30)
    assert done["status"] == "cancelled"
    # Stopped within 2 s of the request, by the server's own clock (same machine).
    assert (datetime.fromisoformat(done["finished_at"]) - asked).total_seconds() < 2.0
    assert stack.client.get(f"/api/v1/experiments/{long['id']}/checkpoints").json()

    # The worker then takes the cancelled job's message and must not start it.
    broker = redis.Redis.from_url(stack.broker_url)
    deadline = time.monotonic() + 30
    while broker.llen("cpu") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    job = stack.client.get(f"/api/v1/experiments/{queued['id']}").json()
    assert job["status"] == "cancelled"
    assert job["attempt"] == 0
    assert job["started_at"] is None


def test_invalid_spec_is_refused_and_nothing_is_stored(stack):
    before = stack.client.get("/api/v1/experiments", params={"limit": 500}).json()
    r = stack.client.post("/api/v1/experiments", json={"task": {"op": "x/y", "p": 100}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert any("p" in d["loc"] and "prime" in d["msg"] for d in detail)
    after = stack.client.get("/api/v1/experiments", params={"limit": 500}).json()
    assert len(after["items"]) == len(before["items"])


def test_analysis_shows_the_fourier_circuit_after_grokking(stack, grokked_run):
    r = stack.client.get(f"/api/v1/experiments/{grokked_run['id']}/analysis")
    assert r.status_code == 200, r.text
    body = r.json()
    summary = body["summary"]
    assert summary["phase"] == "grokking"
    assert summary["memorization_step"] == grokked_run["summary"]["memorization_step"]
    assert summary["generalization_step"] == grokked_run["summary"]["generalization_step"]

    member = body["fourier"]["members"][0]
    assert body["fourier"]["step"] == grokked_run["spec"]["training"]["steps"]
    keys = member["key_frequencies"]
    p = grokked_run["spec"]["task"]["p"]
    assert 1 <= len(keys) <= 8
    assert sum(k["share"] for k in keys) >= 0.6  # a handful carry most of the embedding's norm
    assert len(member["embedding_spectrum"]) == p // 2 + 1

    # The progress measures were recorded as series during training.
    series = series_by_name(stack.client.get(
        f"/api/v1/experiments/{grokked_run['id']}/metrics",
        params={"names": "restricted_loss,excluded_loss,gini_embed,key_freq_energy"},
    ).json())
    assert set(series) == {"restricted_loss", "excluded_loss", "gini_embed", "key_freq_energy"}
    assert series["gini_embed"]["values"][-1] > series["gini_embed"]["values"][0]
    assert series["excluded_loss"]["values"][-1] > series["restricted_loss"]["values"][-1]


def test_analysis_thresholds_are_query_parameters(stack, grokked_run):
    loose = stack.client.get(
        f"/api/v1/experiments/{grokked_run['id']}/analysis", params={"acc_threshold": 0.5}
    ).json()["summary"]
    assert loose["generalization_step"] < grokked_run["summary"]["generalization_step"]
    bad = stack.client.get(
        f"/api/v1/experiments/{grokked_run['id']}/analysis", params={"acc_threshold": 1.5}
    )
    assert bad.status_code == 422
    assert "acc_threshold" in bad.text


def test_checkpoint_analysis_is_computed_on_demand_then_cached(stack, grokked_run):
    import sqlalchemy as sa

    step = 800  # a ci-small checkpoint step
    exp_id = grokked_run["id"]
    first = stack.client.get(f"/api/v1/experiments/{exp_id}/checkpoints/{step}/analysis")
    assert first.status_code == 200  # analysed during training already
    engine = sa.create_engine(stack.database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM analysis_cache WHERE experiment_id = :i AND step = :s"),
                     {"i": exp_id, "s": step})
    engine.dispose()

    r = stack.client.get(f"/api/v1/experiments/{exp_id}/checkpoints/{step}/analysis")
    assert r.status_code == 202
    deadline = time.monotonic() + 60
    while r.status_code == 202:
        assert time.monotonic() < deadline, "checkpoint analysis never finished"
        time.sleep(0.5)
        r = stack.client.get(f"/api/v1/experiments/{exp_id}/checkpoints/{step}/analysis")
    assert r.status_code == 200
    recomputed = r.json()["members"][0]
    original = first.json()["members"][0]
    assert [k["frequency"] for k in recomputed["key_frequencies"]] == [
        k["frequency"] for k in original["key_frequencies"]
    ]
    assert recomputed["measures"]["restricted_loss"] == pytest.approx(original["measures"]["restricted_loss"], rel=1e-5)

    missing = stack.client.get(f"/api/v1/experiments/{exp_id}/checkpoints/123/analysis")
    assert missing.status_code == 404


def test_progress_measures_with_fixed_key_frequencies_through_a_worker(stack, grokked_run):
    exp_id = grokked_run["id"]
    url = f"/api/v1/experiments/{exp_id}/progress-measures"
    r = stack.client.get(url)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    while r.status_code == 202:
        assert time.monotonic() < deadline, "progress measures never finished"
        time.sleep(0.5)
        r = stack.client.get(url)
    assert r.status_code == 200, r.text
    body = r.json()
    final = grokked_run["spec"]["training"]["steps"]
    every = grokked_run["spec"]["training"]["checkpoint_every"]
    assert body["final_step"] == final
    series = series_by_name(body)
    assert series["excluded_loss"]["steps"] == list(range(every, final + 1, every))
    # the key frequencies of the final checkpoint, the ones its own analysis found
    fourier = stack.client.get(f"/api/v1/experiments/{exp_id}/analysis").json()["fourier"]
    assert body["key_frequencies"]["0"] == [
        k["frequency"] for k in fourier["members"][0]["key_frequencies"]
    ]
    assert series["restricted_loss"]["values"][-1] < series["excluded_loss"]["values"][-1]
    norms = series["weight_norm"]["values"]
    assert norms == sorted(norms, reverse=True)  # weight decay shrinks it after memorisation

    # The phases, from these series and from those recorded during training: ci-small
    # memorises, then cleans up while it generalises.
    generalised = grokked_run["summary"]["generalization_step"]
    recorded = stack.client.get(f"/api/v1/experiments/{exp_id}/analysis").json()["phases"]
    for phases in (body["phases"], recorded):
        assert phases["memorization"]["end_step"] == grokked_run["summary"]["memorization_step"]
        assert phases["cleanup"]["start_step"] <= generalised <= phases["cleanup"]["end_step"]


def test_fourier_measures_are_refused_for_s5_but_the_summary_works(stack):
    s5 = tiny_job("s5", steps=10, eval_every=5, checkpoint_every=10)
    s5["task"] = {"kind": "permutation", "op": "x*y"}
    job = stack.client.post("/api/v1/experiments", json=s5).json()
    done = wait_for_status(stack.client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done.get("error")
    r = stack.client.get(f"/api/v1/experiments/{job['id']}/checkpoints/10/analysis")
    assert r.status_code == 422
    assert "need a modular task; this experiment is S5" in r.json()["detail"]
    body = stack.client.get(f"/api/v1/experiments/{job['id']}/analysis").json()
    assert body["fourier"] is None
    assert "S5" in body["fourier_unavailable"]
    assert body["summary"]["phase"] == "confusion"
