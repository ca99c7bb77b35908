"""Abuse limits: each is a GROKLAB_ setting, and going over it is a 422 that names it.

(The body size, page size and max_points caps are in test_api.py, next to their endpoints.)
"""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service import store
from service.app import create_app
from service.contract.settings import Settings
from service.contract.spec import is_prime
from tests.service.specs import API, TINY


def next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def spec_caps(limits: Settings) -> list[tuple[dict, list[str], int, str]]:
    """(body over the cap, the loc of the error, the cap, the setting)."""
    return [
        ({"task": {"p": next_prime(limits.max_p + 1)}},
         ["body", "task", "p"], limits.max_p, "GROKLAB_MAX_P"),
        ({"training": {"steps": limits.max_steps + 1}},
         ["body", "training", "steps"], limits.max_steps, "GROKLAB_MAX_STEPS"),
        ({"model": {"d_model": 2048, "n_heads": 8, "d_mlp": 8192, "n_layers": 2}},
         ["body"], limits.max_params, "GROKLAB_MAX_PARAMS"),
        ({"ensemble": {"size": limits.max_ensemble + 1}},
         ["body", "ensemble"], limits.max_ensemble, "GROKLAB_MAX_ENSEMBLE"),
    ]


@pytest.mark.parametrize("case", range(4), ids=["p", "steps", "params", "ensemble"])
def test_each_spec_cap_is_a_422_naming_the_limit_and_its_setting(
    client, enqueued, api_settings, case
):
    body, loc, cap, setting = spec_caps(api_settings)[case]
    r = client.post(API, json={**TINY, **body})
    assert r.status_code == 422, r.text
    (error,) = [d for d in r.json()["detail"] if d["loc"] == loc]
    assert setting in error["msg"] and f"{cap}" in error["msg"], error
    assert client.get(API).json()["items"] == [] and enqueued == []


def test_a_spec_cap_follows_its_setting(api_settings, client):
    # The app validates specs with its own settings (here GROKLAB_MAX_P=53), not the process's.
    settings = api_settings.model_copy(update={"max_p": 53, "reaper_interval_s": 0})
    with TestClient(create_app(settings), headers=client.headers) as client:
        r = client.post(API, json={**TINY, "task": {"p": 59}})
        assert r.status_code == 422
        assert "at most 53 (GROKLAB_MAX_P) (got 59)" in r.json()["detail"][0]["msg"]
        assert client.post(API, json={**TINY, "task": {"p": 53}}).status_code == 201


# ---- the size of a metrics response ---------------------------------------------------------


@pytest.fixture
def three_series(client, api_sessions) -> str:
    """An experiment with 3 series (train_loss of member 0, val_acc of members 0 and 1), 300
    points each."""
    r = client.post(API, json=TINY)
    experiment_id = r.json()["id"]
    rows = [
        {"step": step, "member": member, "name": name, "value": step / 3000 + member}
        for step in range(0, 3000, 10)
        for name, member in (("train_loss", 0), ("val_acc", 0), ("val_acc", 1))
    ]
    with api_sessions() as s:
        store.ingest_metrics(s, experiment_id, rows)
    return experiment_id


@pytest.fixture
def capped(api_settings, client):
    """Another API on the same database whose responses hold at most 100 points."""
    settings = api_settings.model_copy(update={"max_response_points": 100, "reaper_interval_s": 0})
    with TestClient(create_app(settings), headers=client.headers) as capped_client:
        yield capped_client


def test_metrics_response_size_is_capped(capped, three_series):
    url = f"{API}/{three_series}/metrics"
    r = capped.get(url, params={"max_points": 50})  # 3 series x 50 = 150 > 100
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["query", "max_points"]
    assert "3 series x 50 max_points = 150 points" in error["msg"]
    assert "100 points" in error["msg"] and "GROKLAB_MAX_RESPONSE_POINTS" in error["msg"]
    assert "max_points <= 33" in error["msg"]

    r = capped.get(url, params={"max_points": 33})
    assert r.status_code == 200 and sum(len(s["steps"]) for s in r.json()["series"]) <= 100
    # Fewer series make room for more points each.
    r = capped.get(url, params={"names": "val_acc", "member": 1, "max_points": 100})
    assert r.status_code == 200 and r.json()["max_points"] == 100
    assert 33 < len(r.json()["series"][0]["steps"]) <= 100


def test_metrics_default_max_points_shrinks_to_fit_the_response_cap(capped, client, three_series):
    url = f"{API}/{three_series}/metrics"
    body = capped.get(url).json()
    assert body["max_points"] == 33 and len(body["series"]) == 3
    assert all(s["downsampled"] and len(s["steps"]) <= 33 for s in body["series"])
    # The uncapped API answers the same query with every point.
    body = client.get(url).json()
    assert all(not s["downsampled"] and len(s["steps"]) == 300 for s in body["series"])


def test_metrics_query_over_the_cap_even_at_two_points_per_series(api_settings, client, three_series):
    settings = api_settings.model_copy(update={"max_response_points": 5, "reaper_interval_s": 0})
    with TestClient(create_app(settings), headers=client.headers) as tiny_cap:
        r = tiny_cap.get(f"{API}/{three_series}/metrics")
        assert r.status_code == 422
        msg = r.json()["detail"][0]["msg"]
        assert "GROKLAB_MAX_RESPONSE_POINTS" in msg and "fewer names or one member" in msg
        r = tiny_cap.get(f"{API}/{three_series}/metrics", params={"names": "train_loss"})
        assert r.status_code == 200 and len(r.json()["series"][0]["steps"]) <= 5
