"""What a submission may cost the API before it is refused: a sweep is checked against the quota
from its grid's size before a member is built; a data_schedule's stages, a stored spec's bytes
and a pack's size are capped (422 naming the field); lists and live status frames leave the spec
out. A token's quota of 0 allows none."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service import store
from service.access import auth
from service.app import create_app
from service.contract import budgets
from service.contract.limits import Limits
from service.contract.spec import ExperimentSpec
from service.schemas import sweeps as sweep_schemas
from service.science.sweeps import pack_spec
from tests.service.specs import API, TINY

SWEEPS = "/api/v1/sweeps"


def _client(app, owner: str = "alice", scope: str = "write", **overrides) -> TestClient:
    with app.state.sessions() as session:
        token = auth.create_token(session, owner, scope, **overrides)[1]
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


def stages(n: int, steps: int = 60) -> list[dict]:
    """n valid stages inside a run of `steps` steps (each shrinks the set a little)."""
    return [{"at_step": 1 + i, "train_fraction": round(0.5 - 0.001 * i, 4)}
            for i in range(n) if 1 + i < steps]


@pytest.fixture
def expansions(monkeypatch) -> list[int]:
    """How many members each sweep expansion built (science.sweeps.expand, as the API calls it)."""
    built: list[int] = []
    real = sweep_schemas.expand

    def counting(sweep, limits, max_members):
        members = real(sweep, limits, max_members)
        built.append(len(members))
        return members

    monkeypatch.setattr(sweep_schemas, "expand", counting)
    return built


def test_an_owner_at_its_quota_is_refused_before_a_sweep_is_expanded(api_settings, enqueued,
                                                                      expansions):
    app = create_app(api_settings.model_copy(update={"max_active_jobs_per_owner": 2}))
    sweep = {"name": "big", "base": {**TINY, "data_schedule": stages(50)},
             "grid": {"training.seed": list(range(16)), "optimizer.weight_decay": [0.5, 1.0]}}
    with _client(app) as alice:
        assert alice.post(API, json=TINY).status_code == 201
        assert alice.post(API, json=TINY).status_code == 201
        refused = alice.post(SWEEPS, json=sweep)
        assert refused.status_code == 429, refused.text
        assert "32" in refused.json()["detail"]  # the grid's 32 members, counted unbuilt
    assert expansions == []  # not one member spec was built for it
    with _client(app, "bob") as bob:  # under its quota, the same grid is expanded as ever
        small = {**sweep, "grid": {"training.seed": [0, 1]}}
        assert bob.post(SWEEPS, json=small).status_code == 201
    assert expansions == [2]


def test_a_data_schedule_over_the_stage_cap_is_422_naming_it(client, api_settings, expansions):
    cap = api_settings.max_data_schedule_stages
    long = {**TINY, "training": {"steps": 1000}, "data_schedule": stages(cap + 1, 1000)}
    r = client.post(API, json=long)
    assert r.status_code == 422
    errors = {tuple(e["loc"]): e["msg"] for e in r.json()["detail"]}
    assert "GROKLAB_MAX_DATA_SCHEDULE_STAGES" in errors[("body", "data_schedule")]
    assert client.post(API, json={**long, "data_schedule": stages(cap, 1000)}).status_code == 201

    r = client.post(SWEEPS, json={"base": long, "grid": {"training.seed": list(range(64))}})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "base", "data_schedule"]]
    grid = {"data_schedule": [[], long["data_schedule"]]}
    r = client.post(SWEEPS, json={"base": TINY, "grid": grid})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "grid", "data_schedule", 1]]
    assert expansions == []  # refused from the request alone


def test_a_spec_over_the_stored_size_is_422(api_settings, enqueued):
    app = create_app(api_settings.model_copy(update={"max_spec_bytes": 1500}))
    with _client(app) as alice:
        small = alice.post(API, json={**TINY, "data_schedule": stages(2)})
        assert small.status_code == 201, small.text
        big = {**TINY, "data_schedule": stages(40)}
        r = alice.post(API, json=big)
        assert r.status_code == 422
        assert any("GROKLAB_MAX_SPEC_BYTES" in e["msg"] and e["loc"] == ["body"]
                   for e in r.json()["detail"]), r.json()
        r = alice.post(SWEEPS, json={"base": big, "grid": {"training.seed": [0, 1]}})
        assert r.status_code == 422
        assert "GROKLAB_MAX_SPEC_BYTES" in r.json()["detail"][0]["msg"]


def test_lists_leave_the_spec_out_unless_asked(client):
    job = client.post(API, json=TINY).json()
    assert job["spec"]["task"]["p"] == 47
    listed = client.get(API).json()["items"]
    assert [item["id"] for item in listed] == [job["id"]] and "spec" not in listed[0]
    assert listed[0]["progress"]["total_steps"] == 60  # the rest is there
    with_spec = client.get(API, params={"fields": "spec"}).json()["items"]
    assert with_spec[0]["spec"] == job["spec"]
    assert client.get(f"{API}/{job['id']}").json()["spec"] == job["spec"]
    bad = client.get(API, params={"fields": "summary"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "fields"]


def test_a_pack_is_no_larger_than_the_per_job_budgets_allow(api_settings, enqueued):
    member = ExperimentSpec.model_validate(TINY)
    one = budgets.checkpoint_bytes(member)
    settings = api_settings.model_copy(update={"max_checkpoint_bytes": 3 * one})
    app = create_app(settings)
    with _client(app) as alice:
        r = alice.post(SWEEPS, json={"base": TINY, "grid": {"training.seed": list(range(8))},
                                     "pack_size": 8})
        assert r.status_code == 201, r.text
        assert r.json()["n_packs"] == 3  # 3 + 3 + 2, not one pack of 8 holding 8 checkpoints
        with app.state.sessions() as s:
            members = [store.get_experiment(s, i) for i in r.json()["experiment_ids"]]
        packs: dict[str, list] = {}
        for m in members:
            packs.setdefault(m.pack_id, []).append(ExperimentSpec.model_validate(m.spec))
        limits = Limits.from_settings(settings)
        for specs in packs.values():  # each pack, as the worker trains it, within the budgets
            assert budgets.refusals(pack_spec(specs), limits) == []
        too_big = alice.post(SWEEPS, json={"base": TINY, "grid": {"training.seed": [0, 1]},
                                           "pack_size": settings.max_ensemble + 1})
        assert too_big.status_code == 422
        assert too_big.json()["detail"][0]["loc"] == ["body", "pack_size"]


def test_a_token_quota_of_zero_allows_none(api_settings, enqueued):
    app = create_app(api_settings)
    with _client(app, "zed", max_active_jobs=0) as none_active:
        r = none_active.post(API, json=TINY)
        assert r.status_code == 429 and "at most 0" in r.json()["detail"]
    with _client(app, "zed2", submissions_per_minute=0) as none_per_minute:
        assert none_per_minute.post(API, json=TINY).status_code == 429
    with _client(app, "zed3", max_compute=0) as no_compute:
        r = no_compute.post(API, json=TINY)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "training", "steps"]
    with _client(app, "ops", "admin") as operator:  # unset: an admin token has no limit
        assert operator.post(API, json=TINY).status_code == 201
    # A setting of 0 still means no limit.
    unlimited = create_app(api_settings.model_copy(update={"max_active_jobs_per_owner": 0,
                                                           "max_compute_per_job": 0}))
    with _client(unlimited, "yann") as anyone:
        assert anyone.post(API, json=TINY).status_code == 201


def test_token_create_help_says_what_zero_and_unset_mean():
    from typer.testing import CliRunner

    from service.cli import app

    r = CliRunner().invoke(app, ["token", "create", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    text = " ".join(r.output.replace("│", " ").split())  # rich's boxes, wrapped lines
    assert "0: none" in text and "Leave it out for the setting" in text


def test_the_python_client_lists_with_or_without_specs(client):
    from service.client import Client

    job = client.post(API, json=TINY).json()
    groklab = Client(http=client)
    assert [("spec" in item) for item in groklab.list()] == [False]
    assert [item["spec"] for item in groklab.list(with_spec=True)] == [job["spec"]]
    assert groklab.get(job["id"])["spec"] == job["spec"]
