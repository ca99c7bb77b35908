"""Every route, fed malformed input, answers 4xx and never 5xx (on SQLite and on PostgreSQL).

The inputs: path ids and steps that are huge (10**20, past a 64-bit integer), negative,
non-numeric or non-ASCII; query parameters of the same kinds; JSON bodies of the wrong types
(`{"preset": []}`, `{"preset": {}}`, nested sections that are lists or numbers).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import store
from service.access import auth
from service.app import create_app
from service.contract.settings import Settings
from tests.builders import tiny_spec

HUGE = str(10**20)
BAD_VALUES = [HUGE, "-1", "-" + HUGE, "abc", "ü✓", "1.5", "0x10", "nan"]
BAD_BODIES = [
    {"preset": []},
    {"preset": {}},
    {"preset": 10**20},
    {"name": ["x"], "preset": "ci-small"},
    {"preset": "ci-small", "task": []},
    {"preset": "ci-small", "task": {"p": 10**20}},
    {"preset": "ci-small", "training": {"steps": 10**20, "eval_every": -10**20}},
    {"preset": "ci-small", "model": "big"},
    {"preset": "ci-small", "model": {"d_model": {"x": 1}}},
    {"preset": "ci-small", "ensemble": {"size": 10**20}},
    {"base": {"preset": []}, "grid": {"optimizer.lr": [10**20]}},
    {"base": [], "grid": []},
    {"base": {"preset": "ci-small"}, "grid": {"training.steps": [10**20, -1]}},
    [],
    "preset",
    10**20,
    None,
]


@pytest.fixture
def malformed_client(backend: str, db_url: str, tmp_path, enqueued) -> Iterator[TestClient]:
    """An admin client on an app whose database is the backend under test."""
    settings = Settings(data_dir=tmp_path, database_url=db_url, reaper_interval_s=0)
    app = create_app(settings)
    with app.state.sessions() as session:
        token = auth.create_token(session, "malformed", "admin")[1]
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app, raise_server_exceptions=False, headers=headers) as client:
        yield client


def _good_values(client: TestClient) -> dict[str, str]:
    with client.app.state.sessions() as session:
        exp = store.create_experiment(session, tiny_spec(), "cpu", owner="malformed")
    sweep = client.post("/api/v1/sweeps", json={
        "name": "malformed", "base": {"preset": "ci-small", "model": {"d_model": 16, "n_heads": 2}},
        "grid": {"optimizer.weight_decay": [0.5, 1.0]},
    })
    assert sweep.status_code == 201, sweep.text
    return {"experiment_id": exp.id, "sweep_id": sweep.json()["id"], "step": "0",
            "name": "prieto2025-stablemax"}


def _requests(client: TestClient) -> Iterator[tuple[str, str, dict]]:
    """Every route and method of the app (as its OpenAPI document lists them), with each path
    parameter, each query parameter and the body malformed in turn."""
    good = _good_values(client)
    for path, operations in client.app.openapi()["paths"].items():
        params = re.findall(r"{(\w+)}", path)
        for method, operation in operations.items():
            method = method.upper()
            queries = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            base = path.format(**good)
            yield method, base, {}
            for param in params:
                for bad in BAD_VALUES:
                    yield method, path.format(**{**good, param: bad}), {}
            for query in queries:
                for bad in BAD_VALUES:
                    yield method, base, {"params": {query: bad}}
            if method in ("POST", "PUT", "PATCH"):
                for body in BAD_BODIES:
                    yield method, base, {"json": body}


def test_no_route_answers_5xx_to_malformed_input(malformed_client: TestClient):
    failures = []
    count = 0
    for method, path, kwargs in _requests(malformed_client):
        count += 1
        response = malformed_client.request(method, path, **kwargs)
        if response.status_code >= 500:
            failures.append(f"{method} {path} {kwargs} -> {response.status_code}")
        elif response.status_code == 422:
            assert response.json()["detail"], (method, path, kwargs)
    assert count > 300
    assert not failures, "\n".join(failures)


def test_a_malformed_preset_is_a_422_naming_it(malformed_client: TestClient):
    for preset in ([], {}):
        r = malformed_client.post("/api/v1/experiments", json={"preset": preset})
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == "preset" for e in r.json()["detail"]), r.text


def test_a_step_past_a_64_bit_integer_is_a_422_naming_it(malformed_client: TestClient):
    exp_id = _good_values(malformed_client)["experiment_id"]
    for url in (
        f"/api/v1/experiments/{exp_id}/checkpoints/{HUGE}",
        f"/api/v1/experiments/{exp_id}/checkpoints/{HUGE}/analysis",
    ):
        r = malformed_client.get(url)
        assert r.status_code == 422, (url, r.text)
        assert "step" in r.text
