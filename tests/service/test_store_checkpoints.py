"""Checkpoints and the analysis cache in the store, on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import os

import pytest

from service import store
from tests.builders import tiny_spec


@pytest.fixture
def experiment_id(session) -> str:
    return store.create_experiment(session, tiny_spec(), "cpu").id


def test_checkpoint_stores_sha256_and_size(session, experiment_id):
    blob = os.urandom(100_000)
    checkpoint = store.add_checkpoint(session, experiment_id, 500, blob, {"spec_hash": "abc"})
    assert checkpoint.sha256 == hashlib.sha256(blob).hexdigest()
    assert checkpoint.size == len(blob)
    again = store.get_checkpoint(session, experiment_id, 500)
    assert store.read_checkpoint(session, again) == blob and again.meta == {"spec_hash": "abc"}
    assert store.checkpoint_intact(session, again)


def test_checkpoint_is_idempotent_on_step_first_write_wins(session, experiment_id):
    first = store.add_checkpoint(session, experiment_id, 100, b"first", {})
    second = store.add_checkpoint(session, experiment_id, 100, b"second", {"late": True})
    assert second.sha256 == first.sha256
    assert store.read_checkpoint(session, store.get_checkpoint(session, experiment_id, 100)) == (
        b"first"
    )
    assert len(store.list_checkpoints(session, experiment_id)) == 1


def test_list_latest_and_missing(session, experiment_id):
    assert store.load_checkpoint_verified(session, experiment_id) is None
    for step in (1000, 200, 3000):
        store.add_checkpoint(session, experiment_id, step, f"at {step}".encode(), {"step": step})
    listing = store.list_checkpoints(session, experiment_id)
    assert [c.step for c in listing] == [200, 1000, 3000]
    latest = store.get_checkpoint(session, experiment_id, listing[-1].step)
    assert latest.step == 3000 and store.read_checkpoint(session, latest) == b"at 3000"
    assert store.get_checkpoint(session, experiment_id, 999) is None
    with pytest.raises(store.ExperimentNotFound):
        store.add_checkpoint(session, "00000000-0000-0000-0000-000000000000", 1, b"x", {})


def test_corruption_is_detected(session, experiment_id):
    from tests.service.blobs import overwrite_checkpoint_bytes

    store.add_checkpoint(session, experiment_id, 7, b"good bytes", {})
    overwrite_checkpoint_bytes(session, experiment_id, 7, b"bad bytes!")
    assert not store.checkpoint_intact(session, store.get_checkpoint(session, experiment_id, 7))


def test_analysis_cache_round_trip_and_replace(session, experiment_id):
    assert store.get_cached_analysis(session, experiment_id, 1000) is None
    store.put_cached_analysis(session, experiment_id, 1000, {"key_frequencies": [14, 35]})
    assert store.get_cached_analysis(session, experiment_id, 1000) == {"key_frequencies": [14, 35]}
    store.put_cached_analysis(session, experiment_id, 1000, {"key_frequencies": [7]})
    assert store.get_cached_analysis(session, experiment_id, 1000) == {"key_frequencies": [7]}
    assert store.get_cached_analysis(session, experiment_id, 2000) is None


def test_latest_cached_analysis_is_the_highest_step(session, experiment_id):
    assert store.latest_cached_analysis(session, experiment_id) is None
    for step in (2000, 3000, 1000):
        store.put_cached_analysis(session, experiment_id, step, {"step": step})
    assert store.latest_cached_analysis(session, experiment_id) == {"step": 3000}


def test_each_kind_of_analysis_of_a_step_is_its_own_row(session, experiment_id):
    store.put_cached_analysis(session, experiment_id, 1000, {"members": []})
    store.put_cached_analyses(session, experiment_id, 1000, {"embedding:0": {"clocks": []},
                                                             "circuit": {"members": 1}})
    store.put_cached_analyses(session, experiment_id, 4000, {"neurons:0": {"neurons": []}})
    assert store.get_cached_analysis(session, experiment_id, 1000) == {"members": []}
    assert store.get_cached_analysis(session, experiment_id, 1000, "embedding:0") == {"clocks": []}
    assert store.get_cached_analysis(session, experiment_id, 1000, "neurons:0") is None
    # the latest Fourier measures are those of the fourier kind, whatever else is newer
    assert store.latest_cached_analysis(session, experiment_id) == {"members": []}

    first = store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "circuit")
    again = store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "circuit")
    other = store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "waves:0:3:1")
    assert (first.status, again.status, other.status) == ("queued", "pending", "queued")
    store.fail_cached_analysis(session, experiment_id, 2000, "boom", kind="circuit")
    assert store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "waves:0:3:1").status == "pending"
    retried = store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "circuit")
    assert (retried.status, retried.error) == ("queued", "boom")
    store.withdraw_analysis_request(session, experiment_id, 2000, "waves:0:3:1")
    assert store.request_checkpoint_analysis(session, experiment_id, 2000, 2, "waves:0:3:1").status == "queued"
