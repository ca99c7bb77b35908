"""The REST API on SQLite with a filesystem broker in a temporary folder."""
from __future__ import annotations

import hashlib
import json
import math
import uuid

import pytest
from fastapi.testclient import TestClient

from service import store
from service.app import create_app
from service.contract.settings import Settings
from tests.service.blobs import checkpoint_bytes
from tests.service.specs import API, TINY


def submit(client: TestClient, **overrides) -> dict:
    r = client.post(API, json={**TINY, **overrides})
    assert r.status_code == 201, r.text
    return r.json()


# ---- submit --------------------------------------------------------------------------------


def test_submit_stores_a_queued_job_and_wakes_a_worker(client, enqueued, api_settings):
    job = submit(client)
    assert job["status"] == "queued" and job["attempt"] == 0 and job["queue"] == "cpu"
    assert job["progress"] == {"step": 0, "total_steps": 60, "steps_per_s": None, "eta_s": None}
    assert job["spec"]["task"]["p"] == 47  # preset defaults filled in
    assert job["spec"]["model"]["d_model"] == 16  # the explicit field wins
    assert job["started_at"] is None and job["summary"] is None
    assert enqueued == [(job["id"], "cpu")]
    # The message really is on the embedded broker, in the test's own folder.
    messages = list((api_settings.broker_dir / "out").iterdir())
    assert len(messages) == 1 and job["id"] in messages[0].read_text()
    assert client.get(f"{API}/{job['id']}").json() == job


def test_cuda_jobs_go_to_the_gpu_queue(client, enqueued):
    job = submit(client, training={"steps": 60, "device": "cuda"})
    assert job["queue"] == "gpu" and enqueued == [(job["id"], "gpu")]


def test_a_broker_failure_still_stores_the_job(client, celery_app, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery_app, "send_task", down)
    job = submit(client)
    assert client.get(f"{API}/{job['id']}").json()["status"] == "queued"


def test_invalid_spec_is_422_naming_the_field_and_stores_nothing(client, enqueued):
    r = client.post(API, json={"task": {"op": "x/y", "p": 100}})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert any("p" in d["loc"] and "prime" in d["msg"] for d in detail), detail
    assert client.get(API).json()["items"] == [] and enqueued == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"preset": "karpathy2024"}, "preset", "nanda2023"),
        ({"task": {"p": 10**40}}, "p", "at most"),
        ({"task": {"op": "x*y, y!=0"}}, "op", "'x*y, y>0'"),
        ({"training": {"steps": "many"}}, "steps", "integer"),
        ({"training": {"steps": 10**12}}, "steps", "at most"),
        ({"optimizer": {"lr": 100}}, "lr", "less than or equal to 10"),
        ({"model": {"d_model": 130, "n_heads": 4}}, "n_heads", "divisible"),
        ({"model": {"colour": "red"}}, "colour", "Extra"),
        ({"ensemble": {"size": 3, "seeds": [1, 2]}}, "ensemble", "one entry per member"),
        ({"name": ""}, "name", "at least 1"),
        ({"name": "a\u0000b"}, "name", "NUL"),
    ],
)
def test_each_bad_field_is_named(client, body, field, words):
    r = client.post(API, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in d["loc"] and words in d["msg"] for d in detail), detail


ODD_BODIES = [
    b"",
    b"{",
    b"not json at all",
    b"[]",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"12345678901234567890123456789012345678901234567890",
    b'{"task": null}',
    b'{"task": [1, 2]}',
    b'{"task": {"p": 1e999}}',
    b'{"task": {"p": -1}}',
    b'{"task": {"p": 97.5}}',
    b'{"task": {"kind": "permutation", "op": "x+y"}}',
    b'{"training": {"batch_size": 100000000}}',
    b'{"model": {"d_model": 4096, "d_mlp": 65536, "n_layers": 12}}',
    b'{"ensemble": {"size": 100000}}',
    b'{"optimizer": {"betas": [2, 3]}}',
    b'{"optimizer": {"grad_filter": {"kind": "boxcar"}}}',
    b'{"name": {"nested": true}}',
    b'{"preset": 7, "task": {}}',
    b'{"task": {"p": NaN}}',
    b'{"optimizer": {"lr": Infinity}}',
    b"\xff\xfe\x00garbage",
    json.dumps({"name": "x" * 5000}).encode(),
    json.dumps({"training": {"steps": -(10**30)}}).encode(),
]


@pytest.mark.parametrize("body", ODD_BODIES)
def test_odd_bodies_are_4xx_never_500(client, body):
    r = client.post(API, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert "detail" in r.json()


@pytest.mark.parametrize(
    "path",
    [
        f"{API}?limit=0",
        f"{API}?limit=-5",
        f"{API}?limit=99999999999999999999999",
        f"{API}?limit=abc",
        f"{API}?status=done",
        f"{API}?cursor=%00%01",
        f"{API}?cursor=" + "x" * 1000,
        f"{API}?name=%00",
        f"{API}/not-a-uuid",
        f"{API}/%00",
        f"{API}/{uuid.uuid4()}/metrics",
        f"{API}/{uuid.uuid4()}/checkpoints/5",
    ],
)
def test_odd_queries_are_4xx_never_500(client, path):
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


def test_body_over_the_limit_is_413(client, api_settings):
    big = {"name": "big", "ensemble": {"size": 1, "seeds": [0] * 100_000}}
    r = client.post(API, json=big)
    assert r.status_code == 413
    assert str(api_settings.max_body_bytes) in r.json()["detail"]
    assert "GROKLAB_MAX_BODY_BYTES" in r.json()["detail"]


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b'{"name": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = client.post(API, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "GROKLAB_MAX_BODY_BYTES" in r.json()["detail"]


# ---- list, get -------------------------------------------------------------------------------


def test_list_pages_newest_first_with_a_cursor(client):
    ids = [submit(client, name=f"job-{i}")["id"] for i in range(5)]
    first = client.get(API, params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == ids[:-3:-1]
    second = client.get(API, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get(API, params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"] + third["items"]] == ids[::-1]
    assert third["next_cursor"] is None
    by_name = client.get(API, params={"name": "job-3"}).json()["items"]
    assert [j["id"] for j in by_name] == [ids[3]]


def test_list_limit_is_capped_by_settings(client, api_settings):
    r = client.get(API, params={"limit": api_settings.max_page_size + 1})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    assert str(api_settings.max_page_size) in error["msg"] and "GROKLAB_MAX_PAGE_SIZE" in error["msg"]


def test_filter_by_status_and_bad_cursor(client):
    queued = submit(client)
    cancelled = submit(client)
    client.post(f"{API}/{cancelled['id']}/cancel")
    items = client.get(API, params={"status": "queued"}).json()["items"]
    assert [j["id"] for j in items] == [queued["id"]]
    r = client.get(API, params={"cursor": "garbage"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_unknown_id_is_404_and_a_malformed_one_422(client):
    missing = str(uuid.uuid4())
    for path in ("", "/metrics", "/checkpoints", "/checkpoints/10"):
        r = client.get(f"{API}/{missing}{path}")
        assert r.status_code == 404 and missing in r.json()["detail"]
    assert client.post(f"{API}/{missing}/cancel").status_code == 404
    r = client.get(f"{API}/not-a-uuid")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "experiment_id"]


def test_summary_and_progress_are_passed_through(client, api_sessions):
    job = submit(client)
    summary = {"memorization_step": 400, "generalization_step": 2600, "final": {"val_acc": 1.0}}
    with api_sessions() as s:
        claimed = store.claim_experiment(s, job["id"], "w1")
        store.update_progress(s, job["id"], claimed.attempt, step=60, steps_per_s=30.0, eta_s=0.0)
        store.finish_experiment(s, job["id"], claimed.attempt, "succeeded", summary=summary)
    got = client.get(f"{API}/{job['id']}").json()
    assert got["status"] == "succeeded" and got["summary"] == summary
    assert got["progress"] == {"step": 60, "total_steps": 60, "steps_per_s": 30.0, "eta_s": 0.0}
    assert got["attempt"] == 1 and got["worker"] == "w1"
    assert got["started_at"].endswith(("Z", "+00:00")) and got["finished_at"] is not None


# ---- cancel --------------------------------------------------------------------------------


def test_cancel_queued_running_and_finished(client, api_sessions):
    queued = submit(client)
    r = client.post(f"{API}/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.post(f"{API}/{queued['id']}/cancel")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"
    assert "already finished" in r.json()["detail"]

    running = submit(client)
    with api_sessions() as s:
        store.claim_experiment(s, running["id"], "w")
    r = client.post(f"{API}/{running['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True


# ---- metrics -------------------------------------------------------------------------------


@pytest.fixture
def run_with_metrics(client, api_sessions):
    job = submit(client)
    rows = []
    for step in range(0, 3000, 10):
        rows.append({"step": step, "member": 0, "name": "train_loss", "value": 3.0 / (1 + step)})
        rows.append({"step": step, "member": 0, "name": "val_acc", "value": min(1.0, step / 2000)})
        rows.append({"step": step, "member": 1, "name": "val_acc", "value": 0.5})
    rows.append({"step": 3000, "member": 0, "name": "train_loss", "value": math.nan})
    with api_sessions() as s:
        store.ingest_metrics(s, job["id"], rows)
    return job["id"]


def test_metrics_json_by_name_member_and_window(client, run_with_metrics):
    r = client.get(
        f"{API}/{run_with_metrics}/metrics",
        params={"names": "val_acc", "member": 0, "from_step": 100, "to_step": 150},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    (val,) = body["series"]
    assert (val["name"], val["member"]) == ("val_acc", 0)
    assert val["steps"] == [100, 110, 120, 130, 140, 150]
    assert val["values"] == [s / 2000 for s in val["steps"]]
    assert body["method"] == "minmax-pow2"


def test_metrics_default_is_every_series_raw_up_to_the_cap(client, run_with_metrics):
    body = client.get(f"{API}/{run_with_metrics}/metrics").json()
    assert [(s["name"], s["member"]) for s in body["series"]] == [
        ("train_loss", 0), ("val_acc", 0), ("val_acc", 1)
    ]
    loss = body["series"][0]
    assert loss["points"] == len(loss["steps"]) == 301 and not loss["downsampled"]
    assert loss["values"][-1] is None  # NaN comes back as null


def test_metrics_downsampled_keeps_first_last_and_extremes(client, run_with_metrics):
    body = client.get(
        f"{API}/{run_with_metrics}/metrics", params={"names": "train_loss", "max_points": 20}
    ).json()
    (loss,) = body["series"]
    assert len(loss["steps"]) <= 20 and loss["downsampled"] and loss["points"] == 301
    assert loss["steps"][0] == 0 and loss["steps"][-1] == 3000
    assert loss["values"][0] == 3.0  # the maximum
    assert min(v for v in loss["values"] if v is not None) == 3.0 / 2991  # the minimum


def test_metrics_max_points_is_capped_by_settings(client, run_with_metrics, api_settings):
    r = client.get(
        f"{API}/{run_with_metrics}/metrics", params={"max_points": api_settings.max_points + 1}
    )
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", "max_points"] and str(api_settings.max_points) in error["msg"]
    assert "GROKLAB_MAX_POINTS" in error["msg"]
    for params in ({"max_points": 1}, {"from_step": 10, "to_step": 5}, {"names": ","},
                   {"format": "xml"}, {"member": -1}, {"to_step": 2**40}):
        r = client.get(f"{API}/{run_with_metrics}/metrics", params=params)
        assert r.status_code == 422, (params, r.text)


def test_metrics_csv(client, run_with_metrics):
    r = client.get(
        f"{API}/{run_with_metrics}/metrics",
        params={"names": "train_loss", "format": "csv", "from_step": 2980},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines() == [
        "name,member,step,value",
        f"train_loss,0,2980,{3.0 / 2981!r}",
        f"train_loss,0,2990,{3.0 / 2991!r}",
        "train_loss,0,3000,",
    ]


def test_infinite_values_come_back_as_null(client, api_sessions):
    job = submit(client)
    with api_sessions() as s:
        store.ingest_metrics(s, job["id"], [
            {"step": 0, "member": 0, "name": "loss", "value": math.inf},
            {"step": 1, "member": 0, "name": "loss", "value": 1.0},
        ])
    r = client.get(f"{API}/{job['id']}/metrics")
    assert r.status_code == 200 and r.json()["series"][0]["values"] == [None, 1.0]


# ---- checkpoints ---------------------------------------------------------------------------


def test_checkpoints_list_and_verified_download(client, api_sessions):
    job = submit(client)
    blobs = {30: checkpoint_bytes(b"at 30"), 60: checkpoint_bytes(b"at 60" * 1000)}
    with api_sessions() as s:
        for step, blob in blobs.items():
            store.add_checkpoint(s, job["id"], step, blob, {"step": step})
    listing = client.get(f"{API}/{job['id']}/checkpoints").json()
    assert [(c["step"], c["size"]) for c in listing] == [(30, len(blobs[30])), (60, len(blobs[60]))]
    assert listing[1]["sha256"] == hashlib.sha256(blobs[60]).hexdigest()
    r = client.get(f"{API}/{job['id']}/checkpoints/60")
    assert r.status_code == 200 and r.content == blobs[60]
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-checksum-sha256"] == hashlib.sha256(r.content).hexdigest()
    r = client.get(f"{API}/{job['id']}/checkpoints/45")
    assert r.status_code == 404 and "step 45" in r.json()["detail"]


def test_a_corrupt_checkpoint_is_refused_not_served(client, api_sessions):
    from tests.service.blobs import overwrite_checkpoint_bytes

    job = submit(client)
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 30, checkpoint_bytes(b"the real bytes"), {})
        overwrite_checkpoint_bytes(s, job["id"], 30, checkpoint_bytes(b"flipped bits!!"))
    r = client.get(f"{API}/{job['id']}/checkpoints/30")
    assert r.status_code == 409
    assert "corrupt" in r.json()["detail"] and "sha256" in r.json()["detail"]


# ---- health, readiness, docs -----------------------------------------------------------------


def test_health_and_readiness(client, api_settings):
    assert client.get("/healthz").json() == {"status": "ok"}
    # The embedded broker's folder exists once a Celery app has been built on it.
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readiness_names_what_is_missing(tmp_path):
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200  # liveness needs no database
        r = client.get("/readyz")
    assert r.status_code == 503
    # Generic words: /readyz needs no token, so it tells nothing of hosts, ports or paths.
    assert r.json()["checks"] == {
        "database": "database unavailable",
        "broker": "broker unavailable",  # no worker has created the folder
    }
    assert "127.0.0.1" not in r.text and ":1" not in r.text and str(tmp_path) not in r.text


def test_readiness_with_redis(tmp_path, api_settings, redis_test_url):
    good = api_settings.model_copy(update={"broker_url": redis_test_url})
    bad = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(good)) as client:
        assert client.get("/readyz").status_code == 200
    with TestClient(create_app(bad)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"] == "broker unavailable"
    assert r.json()["checks"]["database"] == "ok"


def test_openapi_documents_examples_and_downsampling(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/v1/experiments"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert examples["ci-small"]["value"] == {"name": "ci-small", "preset": "ci-small"}
    metrics = spec["paths"]["/api/v1/experiments/{experiment_id}/metrics"]["get"]
    assert "first and the last point" in metrics["description"]
    assert {"/healthz", "/readyz"} <= set(spec["paths"])
