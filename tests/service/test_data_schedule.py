"""A spec's data_schedule (ungrokking, curricula) is validated at submission: each mistake is a 422
whose message names the field and says what is allowed."""
from __future__ import annotations

import pytest

from tests.service.specs import API, TINY  # TINY: ci-small (p=47, 2209 pairs, 60%), 60 steps


def stage(at_step, train_fraction):
    return {"at_step": at_step, "train_fraction": train_fraction}


@pytest.mark.parametrize("schedule, extra, message", [
    ([stage(60, 0.1)], {}, "data_schedule[0].at_step must be below training.steps 60 (got 60)"),
    ([stage(30, 0.3), stage(30, 0.1)], {},
     "data_schedule[1].at_step must be greater than data_schedule[0].at_step 30"),
    ([stage(30, 0.6)], {}, "data_schedule[0].train_fraction must be below task.train_fraction 0.6"),
    ([stage(20, 0.3), stage(40, 0.4)], {},
     "data_schedule[1].train_fraction must be below data_schedule[0].train_fraction 0.3"),
    ([stage(30, 0.0001)], {}, "data_schedule[0].train_fraction leaves no training example of the 2209 pairs"),
    ([stage(30, 0.01)], {"training": {"steps": 60, "batch_size": 64}},
     "data_schedule[0].train_fraction leaves 22 training examples, fewer than training.batch_size 64"),
    ([stage(30, 0.4)], {"ensemble": {"size": 2, "train_fraction": [0.6, 0.3]}},
     "data_schedule[0].train_fraction must be below every member's ensemble.train_fraction 0.3"),
])
def test_a_bad_schedule_is_a_422_naming_the_field(client, schedule, extra, message):
    r = client.post(API, json={**TINY, **extra, "data_schedule": schedule})
    assert r.status_code == 422, r.text
    assert any(message in e["msg"] for e in r.json()["detail"]), r.json()["detail"]


def test_a_step_must_be_positive(client):
    r = client.post(API, json={**TINY, "data_schedule": [stage(0, 0.1)]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "data_schedule", 0, "at_step"]


def test_a_good_schedule_is_stored_with_the_spec(client):
    r = client.post(API, json={**TINY, "data_schedule": [stage(20, 0.3), stage(40, 0.05)]})
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["data_schedule"] == [stage(20, 0.3), stage(40, 0.05)]
    assert r.json()["spec"]["notify"] is None


def test_a_sweep_shares_the_schedule_and_checks_it_for_every_member(client):
    r = client.post("/api/v1/sweeps", json={
        "base": {**TINY, "data_schedule": [stage(30, 0.35)]},
        "grid": {"task.train_fraction": [0.6, 0.3]},
    })
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["msg"].startswith('member {"task.train_fraction": 0.3}: ')
    assert "data_schedule[0].train_fraction must be below task.train_fraction 0.3" in error["msg"]
    r = client.post("/api/v1/sweeps", json={
        "base": {**TINY, "data_schedule": [stage(30, 0.2)]},
        "grid": {"task.train_fraction": [0.6, 0.3], "training.seed": [0, 1]}, "pack_size": 4,
    })
    assert r.status_code == 201, r.text
    assert r.json()["n_packs"] == 1  # the members share the schedule, so they share a pack
