"""Sweeps: a grid submitted once becomes queued member experiments trained in packs; its status
comes from its members; its phase diagram and member table come from their summaries.

The API tests run on SQLite with a filesystem broker; the store tests on SQLite and PostgreSQL.
"""
from __future__ import annotations

import csv
import io
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import store
from service.contract.limits import Limits
from service.contract.models import Experiment, utcnow
from service.contract.settings import Settings
from service.science.sweeps import SweepSpec, cpu_pack_sizes, expand, plan_packs
from tests.builders import tiny_spec
from tests.service.specs import API, TINY

SWEEPS = "/api/v1/sweeps"
BASE = {k: v for k, v in TINY.items() if k != "name"} | {
    "training": {"steps": 60, "device": "cpu"}
}
GRID = {
    "optimizer.weight_decay": [0, 1],
    "task.train_fraction": [0.3, 0.6],
    "training.seed": [0, 1],
}
AXES = list(GRID)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit_sweep(client: TestClient, grid: dict | None = None, **fields) -> dict:
    r = client.post(SWEEPS, json={"name": "wd-by-fraction", "base": BASE,
                                  "grid": grid or GRID, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def set_members(sessions, experiment_ids: list[str], status: str, **values) -> None:
    """Put members in a state as a worker would have (the API cannot)."""
    with sessions() as s:
        s.execute(update(Experiment).where(Experiment.id.in_(experiment_ids))
                  .values(status=status, **values))
        s.commit()


def points(client: TestClient, sweep: dict) -> dict[tuple, str]:
    """{(weight decay, train fraction, seed): experiment id} of a sweep over GRID."""
    rows = client.get(f"{SWEEPS}/{sweep['id']}/members").json()["members"]
    return {tuple(row["point"][a] for a in AXES): row["experiment_id"] for row in rows}


# ---- submit ----------------------------------------------------------------------------------


def test_a_grid_becomes_queued_members_enqueued_as_packs(client, enqueued, api_sessions):
    other = client.post(API, json=TINY).json()["id"]
    enqueued.clear()
    sweep = submit_sweep(client)
    assert sweep["status"] == "queued" and sweep["progress"] == 0 and sweep["finished_at"] is None
    assert sweep["counts"] == {"queued": 8, "running": 0, "succeeded": 0, "failed": 0,
                               "cancelled": 0, "paused": 0, "pruned": 0}
    assert sweep["n_members"] == 8 and len(set(sweep["experiment_ids"])) == 8
    assert sweep["grid"] == GRID and sweep["pack_size"] is None
    assert client.get(f"{SWEEPS}/{sweep['id']}").json() == sweep

    # Default packs on the CPU: members that share a training fraction, cut into one pack per
    # training process of the workers (two here, see api_settings); one message wakes a worker
    # for each pack.
    assert sweep["n_packs"] == len(enqueued) == 2 * len(cpu_pack_sizes(4, 2)) == 4
    with api_sessions() as s:
        members = store.sweep_members(s, sweep["id"])
    assert {m.pack_id for m in members} == {job_id for job_id, _ in enqueued}
    assert {queue for _, queue in enqueued} == {"cpu"}

    listed = client.get(API, params={"sweep_id": sweep["id"]}).json()["items"]
    assert {j["id"] for j in listed} == set(sweep["experiment_ids"]) and other not in listed
    # Each member is an ordinary experiment whose spec holds its point's values.
    for index, experiment_id in enumerate(sweep["experiment_ids"]):
        job = client.get(f"{API}/{experiment_id}").json()
        wd, fraction, seed = (index // 4) % 2, (0.3, 0.6)[(index // 2) % 2], index % 2
        assert job["status"] == "queued" and job["queue"] == "cpu"
        assert job["spec"]["optimizer"]["weight_decay"] == wd
        assert job["spec"]["task"]["train_fraction"] == fraction
        assert job["spec"]["training"]["seed"] == seed
        assert job["spec"]["model"]["d_model"] == 16  # the base's own fields stay
        assert job["name"] == (
            f"wd-by-fraction[weight_decay={wd},train_fraction={fraction},seed={seed}]"
        )
        assert job["progress"]["total_steps"] == 60


def test_pack_size_cuts_the_members_into_more_packs(client, enqueued):
    sweep = submit_sweep(client, pack_size=3)
    assert sweep["n_packs"] == 3 and len(enqueued) == 3 and sweep["pack_size"] == 3


def test_a_broker_failure_still_stores_the_sweep(client, celery_app, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(celery_app, "send_task", down)
    sweep = submit_sweep(client)
    assert client.get(f"{SWEEPS}/{sweep['id']}").json()["counts"]["queued"] == 8


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"grid": {"task.q": [1, 2]}}, ["body", "grid"], ["task.q", "unknown field 'q'"]),
        ({"grid": {"optimizer": [1]}}, ["body", "grid"], ["optimizer", "is a section"]),
        ({"grid": {"task.p": []}}, ["body", "grid"], ["grid.task.p", "at least one value"]),
        ({"grid": {}}, ["body", "grid"], ["at least one axis"]),
        ({"grid": {"training.seed": [1, 1]}}, ["body", "grid"], ["training.seed", "twice"]),
        (
            {"base": {**BASE, "task": {"op": "x/y"}}, "grid": {"task.p": [7, 11, 100]}},
            ["body", "grid", "task.p", 2],
            ["grid.task.p[2]: p must be prime for op 'x/y' (got 100)"],
        ),
        (
            {"grid": {"optimizer.lr": [1e-3, 100]}},
            ["body", "grid", "optimizer.lr", 1],
            ["grid.optimizer.lr[1]", "less than or equal to 10"],
        ),
        ({"grid": {"ensemble.size": [2]}}, ["body", "grid", "ensemble.size"], ["single runs"]),
        ({"pack_size": 0}, ["body", "pack_size"], ["greater than or equal to 1"]),
    ],
)
def test_a_bad_grid_is_422_naming_the_axis_and_stores_nothing(client, enqueued, body, loc, words):
    r = client.post(SWEEPS, json={"name": "bad", "base": BASE, "grid": GRID, **body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"] == loc and all(w in d["msg"] for w in words) for d in detail), detail
    assert client.get(SWEEPS).json()["items"] == [] and enqueued == []
    assert client.get(API).json()["items"] == []


def test_more_members_than_the_setting_allows_is_422(client, api_settings, enqueued):
    client.app.state.settings = api_settings.model_copy(update={"max_sweep_members": 4})
    r = client.post(SWEEPS, json={"base": BASE, "grid": GRID})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "grid"]
    assert "8 points" in error["msg"] and "at most 4" in error["msg"]
    assert "GROKLAB_MAX_SWEEP_MEMBERS" in error["msg"]
    assert enqueued == [] and client.get(API).json()["items"] == []


def test_member_specs_respect_the_apps_limits(client, api_settings):
    client.app.state.settings = api_settings.model_copy(update={"max_steps": 100})
    r = client.post(SWEEPS, json={"base": BASE, "grid": {"training.steps": [50, 200]}})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "grid", "training.steps", 1] and "100" in error["msg"]


def test_a_body_over_the_limit_is_413(client):
    r = client.post(SWEEPS, json={"base": BASE, "grid": {"training.seed": list(range(20_000))}})
    assert r.status_code == 413 and "GROKLAB_MAX_BODY_BYTES" in r.json()["detail"]


# ---- list, tenancy -------------------------------------------------------------------------


def test_list_pages_newest_first_with_a_cursor(client):
    ids = [submit_sweep(client, grid={"training.seed": [0]}, name=f"s{i}")["id"]
           for i in range(3)]
    first = client.get(SWEEPS, params={"limit": 2}).json()
    second = client.get(SWEEPS, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert first["items"][0]["counts"]["queued"] == 1 and "experiment_ids" not in first["items"][0]
    r = client.get(SWEEPS, params={"cursor": "garbage"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_sweeps_belong_to_their_owner(client, make_token):
    sweep = submit_sweep(client, grid={"training.seed": [0, 1]})
    bob, admin = make_token("bob", "write"), make_token("root", "admin")
    for path in ("", "/phase-diagram?x=training.seed", "/members"):
        r = client.get(f"{SWEEPS}/{sweep['id']}{path}", headers=bearer(bob))
        assert r.status_code == 404 and r.json()["detail"] == f"sweep {sweep['id']} not found"
        assert client.get(f"{SWEEPS}/{sweep['id']}{path}", headers=bearer(admin)).status_code == 200
    assert client.post(f"{SWEEPS}/{sweep['id']}/cancel", headers=bearer(bob)).status_code == 404
    assert client.get(f"{SWEEPS}/{uuid.uuid4()}").status_code == 404
    assert client.get(SWEEPS, headers=bearer(bob)).json()["items"] == []
    assert [s["id"] for s in client.get(SWEEPS, headers=bearer(admin)).json()["items"]] == [
        sweep["id"]]
    r = client.get(SWEEPS, params={"owner": "alice"}, headers=bearer(bob))
    assert r.status_code == 422 and "only admin tokens may list" in r.json()["detail"][0]["msg"]
    # Its members are alice's experiments too.
    member = sweep["experiment_ids"][0]
    assert client.get(f"{API}/{member}", headers=bearer(bob)).status_code == 404


def test_a_read_token_can_look_but_not_submit_or_cancel(client, make_token):
    sweep = submit_sweep(client, grid={"training.seed": [0]})
    read = bearer(make_token("alice", "read"))
    r = client.post(SWEEPS, json={"base": BASE, "grid": GRID}, headers=read)
    assert r.status_code == 403 and "'write'" in r.json()["detail"]
    assert client.post(f"{SWEEPS}/{sweep['id']}/cancel", headers=read).status_code == 403
    assert client.get(f"{SWEEPS}/{sweep['id']}", headers=read).status_code == 200
    anonymous = TestClient(client.app)
    assert anonymous.get(SWEEPS).status_code == 401


# ---- cancel ----------------------------------------------------------------------------------


def test_cancel_cancels_every_member_and_a_second_cancel_is_409(client):
    sweep = submit_sweep(client)
    r = client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["counts"]["cancelled"] == 8
    assert r.json()["finished_at"] is not None
    for experiment_id in sweep["experiment_ids"]:
        job = client.get(f"{API}/{experiment_id}").json()
        assert job["status"] == "cancelled" and job["cancel_requested"]
    again = client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert again.status_code == 409 and again.json()["status"] == "cancelled"
    assert "already finished" in again.json()["detail"]


def test_cancel_asks_running_members_to_stop(client, api_sessions):
    sweep = submit_sweep(client)
    running = sweep["experiment_ids"][:3]
    set_members(api_sessions, running, "running", started_at=utcnow(), attempt=1)
    r = client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert r.json()["status"] == "running"  # until the worker stops them
    assert r.json()["counts"] == {"queued": 0, "running": 3, "succeeded": 0, "failed": 0,
                                  "cancelled": 5, "paused": 0, "pruned": 0}
    for experiment_id in running:
        job = client.get(f"{API}/{experiment_id}").json()
        assert job["status"] == "running" and job["cancel_requested"]
    set_members(api_sessions, running, "cancelled", finished_at=utcnow())
    assert client.get(f"{SWEEPS}/{sweep['id']}").json()["status"] == "cancelled"


# ---- status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "status"),
    [
        ({}, "queued"),
        ({"running": 1}, "running"),
        ({"succeeded": 1}, "running"),  # one done, the rest still queued
        ({"cancelled": 1}, "running"),
        ({"succeeded": 8}, "succeeded"),
        ({"succeeded": 6, "failed": 1, "cancelled": 1}, "failed"),
        ({"succeeded": 7, "cancelled": 1}, "cancelled"),
        ({"cancelled": 8}, "cancelled"),
        ({"failed": 8}, "failed"),
        ({"paused": 8}, "paused"),
        ({"succeeded": 6, "paused": 2}, "paused"),  # nothing left to run until resumed
        ({"running": 1, "paused": 7}, "running"),
        ({"paused": 1}, "running"),  # the rest still queued
        ({"succeeded": 5, "pruned": 3}, "succeeded"),  # pruning is how a sweep ends early
        ({"pruned": 8}, "succeeded"),
    ],
)
def test_status_is_derived_from_the_members(client, api_sessions, states, status):
    sweep = submit_sweep(client)
    ids = iter(sweep["experiment_ids"])
    now = utcnow()
    last_finish = None
    for state, n in states.items():
        chosen = [next(ids) for _ in range(n)]
        if state == "running":
            set_members(api_sessions, chosen, state, started_at=now, step=30)
        else:
            finish = now + timedelta(seconds=n)
            last_finish = finish if last_finish is None else max(last_finish, finish)
            set_members(api_sessions, chosen, state, started_at=now, step=60, finished_at=finish)
    out = client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert out["status"] == status
    assert out["counts"] == {
        s: states.get(s, 0) + (8 - sum(states.values()) if s == "queued" else 0)
        for s in ("queued", "running", "succeeded", "failed", "cancelled", "paused", "pruned")
    }
    done = 60 * sum(n for s, n in states.items() if s != "running") + 30 * states.get("running", 0)
    assert out["progress"] == pytest.approx(done / (8 * 60))
    if status in ("succeeded", "failed", "cancelled"):
        assert out["progress"] == 1.0
        assert out["finished_at"] is not None
        assert out["finished_at"].replace("Z", "+00:00") == last_finish.isoformat()
    else:
        assert out["finished_at"] is None


def test_a_finished_member_counts_as_done_whatever_step_it_stopped_at(client, api_sessions):
    sweep = submit_sweep(client, grid={"training.seed": [0, 1]})
    first, second = sweep["experiment_ids"]
    set_members(api_sessions, [first], "failed", step=10, finished_at=utcnow())
    set_members(api_sessions, [second], "running", step=15, started_at=utcnow())
    out = client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert out["status"] == "running" and out["progress"] == pytest.approx((60 + 15) / 120)


# ---- phase diagram and members -----------------------------------------------------------


def summary(phase: str, memorization: int | None, generalization: int | None, val: float
            ) -> dict:
    return {"phase": phase, "memorization_step": memorization,
            "generalization_step": generalization, "grokked": generalization is not None,
            "final_train_acc": 1.0, "final_val_acc": val, "last_step": 60}


# (weight decay, train fraction, seed) -> the summary its worker wrote (None: still running).
SUMMARIES = {
    (0, 0.3, 0): summary("memorization", 100, None, 0.1),
    (0, 0.3, 1): summary("memorization", 200, None, 0.2),
    (0, 0.6, 0): summary("memorization", 100, None, 0.3),
    (0, 0.6, 1): summary("memorization", 300, None, 0.4),
    (1, 0.3, 0): summary("comprehension", 120, 150, 0.97),
    (1, 0.3, 1): None,
    (1, 0.6, 0): summary("grokking", 100, 1000, 0.99),
    (1, 0.6, 1): summary("grokking", 300, 2000, 1.0),
}


@pytest.fixture
def finished_sweep(client, api_sessions) -> dict:
    """A sweep over GRID whose members finished with SUMMARIES (one still running)."""
    sweep = submit_sweep(client)
    for point, experiment_id in points(client, sweep).items():
        if SUMMARIES[point] is None:
            set_members(api_sessions, [experiment_id], "running", started_at=utcnow())
        else:
            set_members(api_sessions, [experiment_id], "succeeded", step=60,
                        started_at=utcnow(), finished_at=utcnow(), summary=SUMMARIES[point])
    return sweep


def test_the_phase_diagram_aggregates_the_members_summaries(client, finished_sweep):
    r = client.get(f"{SWEEPS}/{finished_sweep['id']}/phase-diagram",
                   params={"x": "optimizer.weight_decay", "y": "task.train_fraction"})
    assert r.status_code == 200, r.text
    diagram = r.json()
    assert diagram["x"] == {"axis": "optimizer.weight_decay", "values": [0, 1]}
    assert diagram["y"] == {"axis": "task.train_fraction", "values": [0.3, 0.6]}
    assert [(c["x"], c["y"]) for c in diagram["cells"]] == [(0, 0.3), (0, 0.6), (1, 0.3), (1, 0.6)]
    no_wd, no_wd_more_data, wd_little_data, wd = diagram["cells"]
    assert no_wd["n"] == no_wd["finished"] == 2
    assert no_wd["phases"]["memorization"] == 2 and no_wd["phases"]["grokking"] == 0
    assert no_wd["grokked_fraction"] == 0
    assert no_wd["median_memorization_step"] == 150
    assert no_wd["median_generalization_step"] is None  # none generalised
    assert no_wd["median_final_val_acc"] == pytest.approx(0.15)
    assert no_wd_more_data["median_memorization_step"] == 200
    # One member still running: counted, but only the finished one has a summary.
    assert (wd_little_data["n"], wd_little_data["finished"]) == (2, 1)
    assert wd_little_data["phases"]["comprehension"] == 1
    assert wd_little_data["grokked_fraction"] == 1
    assert wd_little_data["median_generalization_step"] == 150
    assert wd["phases"]["grokking"] == 2 and wd["grokked_fraction"] == 1
    assert (wd["median_memorization_step"], wd["median_generalization_step"]) == (200, 1500)
    assert wd["median_final_val_acc"] == pytest.approx(0.995)


def test_a_one_axis_diagram_aggregates_everything_else(client, finished_sweep):
    diagram = client.get(f"{SWEEPS}/{finished_sweep['id']}/phase-diagram",
                         params={"x": "optimizer.weight_decay"}).json()
    assert diagram["y"] is None
    no_wd, wd = diagram["cells"]
    assert (no_wd["x"], no_wd["y"], no_wd["n"]) == (0, None, 4)
    assert no_wd["phases"]["memorization"] == 4
    assert (wd["n"], wd["finished"], wd["grokked_fraction"]) == (4, 3, 1)
    assert wd["median_generalization_step"] == 1000


def test_the_phase_diagram_as_csv(client, finished_sweep):
    r = client.get(f"{SWEEPS}/{finished_sweep['id']}/phase-diagram",
                   params={"x": "optimizer.weight_decay", "y": "task.train_fraction",
                           "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == (
        "x,y,n,finished,grokked_fraction,median_memorization_step,median_generalization_step,"
        "median_final_val_acc,comprehension,grokking,memorization,confusion"
    )
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["x"], row["y"]) for row in rows] == [("0", "0.3"), ("0", "0.6"), ("1", "0.3"),
                                                      ("1", "0.6")]
    assert rows[0]["memorization"] == "2" and rows[0]["median_generalization_step"] == ""
    assert rows[3]["grokking"] == "2" and float(rows[3]["median_generalization_step"]) == 1500


@pytest.mark.parametrize(
    ("params", "loc", "words"),
    [
        ({"x": "task.p"}, ["query", "x"], ["'task.p'", "optimizer.weight_decay, "
                                           "task.train_fraction, training.seed"]),
        ({"x": "training.seed", "y": "model.d_model"}, ["query", "y"], ["'model.d_model'"]),
        ({"x": "training.seed", "y": "training.seed"}, ["query", "y"], ["different axis"]),
        ({}, ["query", "x"], ["Field required"]),
        ({"x": "training.seed", "format": "xml"}, ["query", "format"], ["json", "csv"]),
    ],
)
def test_a_bad_axis_is_422_naming_it(client, params, loc, words):
    sweep = submit_sweep(client)
    r = client.get(f"{SWEEPS}/{sweep['id']}/phase-diagram", params=params)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and all(w in error["msg"] for w in words), error


def test_members_as_json_and_csv(client, finished_sweep):
    members = client.get(f"{SWEEPS}/{finished_sweep['id']}/members").json()
    assert members["axes"] == AXES
    rows = members["members"]
    assert [row["index"] for row in rows] == list(range(8))
    assert [row["experiment_id"] for row in rows] == finished_sweep["experiment_ids"]
    grokked = rows[7]
    assert grokked["point"] == {"optimizer.weight_decay": 1, "task.train_fraction": 0.6,
                                "training.seed": 1}
    assert (grokked["status"], grokked["phase"], grokked["generalization_step"]) == (
        "succeeded", "grokking", 2000)
    assert grokked["summary"] == SUMMARIES[(1, 0.6, 1)]
    running = rows[5]
    assert running["status"] == "running" and running["phase"] is None
    assert running["summary"] is None

    r = client.get(f"{SWEEPS}/{finished_sweep['id']}/members", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert list(table[0]) == ["experiment_id", "index", "status", *AXES, "phase",
                              "memorization_step", "generalization_step", "final_train_acc",
                              "final_val_acc", "will_generalize", "pruned_at_step", "prune_score",
                              "prune_reason"]
    assert len(table) == 8
    assert {row["phase"] for row in table if row["optimizer.weight_decay"] == "0"} == {
        "memorization"}
    assert table[7]["generalization_step"] == "2000" and table[7]["final_val_acc"] == "1.0"
    assert table[5]["phase"] == "" and table[5]["status"] == "running"


# ---- the store, on SQLite and PostgreSQL ---------------------------------------------------


def planned(grid: dict, pack_size: int | None = None):
    sweep = SweepSpec(name="store", base=BASE, grid=grid, pack_size=pack_size)
    members = expand(sweep, Limits.from_settings(Settings()), 1024)
    return sweep, plan_packs(members, pack_size, 40 * 2**30, 256)


def test_store_creates_a_sweep_of_1024_members_in_one_go(session):
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    spec, packs = planned({"optimizer.weight_decay": [i / 10 for i in range(32)],
                           "training.seed": list(range(32))}, pack_size=64)
    sweep, members, jobs = store.create_sweep(session, spec, packs, lambda s: "cpu", owner)
    assert (sweep.n_members, sweep.n_packs, len(jobs)) == (1024, 16, 16)
    assert [m.sweep_index for m in members] == list(range(1024))
    stored = store.sweep_members(session, sweep.id)
    assert [m.id for m in stored] == [m.id for m in members]
    assert stored[33].sweep_point == {"optimizer.weight_decay": 0.1, "training.seed": 1}
    assert stored[33].spec["optimizer"]["weight_decay"] == 0.1
    assert {m.pack_id for m in stored} == {job_id for job_id, _ in jobs}
    assert all(m.owner == owner and m.status == "queued" and m.queue == "cpu" for m in stored)
    assert store.sweep_member_ids(session, sweep.id) == [m.id for m in members]
    state = store.sweep_status(session, sweep)
    assert (state.status, state.counts["queued"], state.progress) == ("queued", 1024, 0.0)
    # Each pack is one job for the reconciler, however many members it has.
    assert store.job_queues(session, [m.id for m in stored]) == dict(jobs)
    # A pack's worker finds its members' sweep in one query, in the members' order.
    alone = store.create_experiment(session, tiny_spec(name="alone"), "cpu")
    ids = [stored[5].id, alone.id, stored[2].id]
    assert store.sweep_ids(session, ids) == [sweep.id, None, sweep.id]


def test_workers_claim_a_sweeps_packs_in_the_planned_order(session):
    """The packs share the submit's time; the fair order still takes them as planned (largest
    first), not by their random ids."""
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:8]}"
    spec, packs = planned({"task.train_fraction": [0.3, 0.5, 0.7], "training.seed": [0, 1, 2]},
                          pack_size=1)
    _, _, jobs = store.create_sweep(session, spec, packs, lambda s: queue, owner)
    assert store.fair_queue(session, queue, limit=len(jobs)) == [job_id for job_id, _ in jobs]


def test_store_lists_filters_and_cancels(session):
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    spec, packs = planned({"training.seed": [0, 1, 2]})
    first, _, _ = store.create_sweep(session, spec, packs, lambda s: "cpu", owner)
    second, members, _ = store.create_sweep(session, spec, packs, lambda s: "cpu", owner)
    page, cursor = store.list_sweeps(session, owner=owner, limit=1)
    assert [s.id for s in page] == [second.id] and cursor is not None
    page, cursor = store.list_sweeps(session, owner=owner, limit=1, cursor=cursor)
    assert [s.id for s in page] == [first.id] and cursor is None
    listed, _ = store.list_experiments(session, sweep_id=second.id)
    assert {e.id for e in listed} == {m.id for m in members}

    running = members[0].id
    session.execute(update(Experiment).where(Experiment.id == running)
                    .values(status="running", started_at=utcnow(), attempt=1))
    session.commit()
    assert store.cancel_sweep(session, second.id) == 3
    by_id = {e.id: e for e in store.sweep_members(session, second.id)}
    assert by_id[running].status == "running" and by_id[running].cancel_requested
    assert {by_id[m.id].status for m in members[1:]} == {"cancelled"}
    assert all(by_id[m.id].finished_at is not None for m in members[1:])
    statuses = store.sweep_statuses(session, [first.id, second.id])
    assert statuses[first.id].status == "queued"
    assert statuses[second.id].counts == {"queued": 0, "running": 1, "succeeded": 0,
                                          "failed": 0, "cancelled": 2, "paused": 0, "pruned": 0}
    assert store.cancel_sweep(session, first.id) == 3
    assert store.cancel_sweep(session, first.id) == 0  # nothing left to cancel


def test_early_stopping_is_stored_with_the_sweep_and_a_check_reads_the_other_members_scores(
        client, api_sessions):
    asha = {"policy": "asha", "metric": "val_acc", "check_every": 50, "keep_fraction": 0.5}
    sweep = submit_sweep(client, early_stopping=asha)
    assert sweep["early_stopping"]["keep_fraction"] == 0.5
    ids = sweep["experiment_ids"]
    with api_sessions() as s:
        assert store.sweep_early_stopping(s, sweep["id"])["policy"] == "asha"
        for value, exp_id in zip((0.1, 0.4, 0.3), ids):
            store.ingest_metrics(s, exp_id, [{"step": 50, "member": 0, "name": "val_acc", "value": value}])
        # What the worker of ids[0]'s pack ranks it against: the others that reached step 50.
        assert store.sweep_scores_at(s, sweep["id"], "val_acc", 50, [ids[0]]) == {ids[1]: 0.4, ids[2]: 0.3}
        assert store.sweep_scores_at(s, sweep["id"], "val_acc", 60, [ids[0]]) == {}
    r = client.post(SWEEPS, json={"name": "x", "base": BASE, "grid": GRID,
                                  "early_stopping": {"policy": "asha", "check_every": 30}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "early_stopping"]
    assert "multiple of training.eval_every (50)" in r.json()["detail"][0]["msg"]
