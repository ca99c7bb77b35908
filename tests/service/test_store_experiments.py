"""Job state in the store, SQLite and PostgreSQL: create, list, claim, progress, cancel, finish."""
from __future__ import annotations

import threading
import uuid
from datetime import timezone

import pytest

from service import store
from tests.builders import tiny_spec


def test_create_stores_a_queued_job_with_its_resolved_spec(session):
    spec = tiny_spec(name="create-me", training={"steps": 123})
    job = store.create_experiment(session, spec, "cpu")
    uuid.UUID(job.id)
    got = store.get_experiment(session, job.id)
    assert (got.status, got.attempt, got.queue, got.name) == ("queued", 0, "cpu", "create-me")
    assert got.total_steps == 123 and got.step == 0
    assert got.spec == spec.model_dump(mode="json")
    assert got.spec["task"]["p"] == 47  # the preset's default, resolved
    assert got.max_attempts == 3 and got.cancel_requested is False
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset().total_seconds() == 0


def test_unknown_id_is_none(session):
    assert store.get_experiment(session, str(uuid.uuid4())) is None
    assert store.claim_experiment(session, str(uuid.uuid4()), "w") is None
    assert store.request_cancel(session, str(uuid.uuid4())) is None


def test_list_is_newest_first_paged_and_filtered(session):
    name = f"page-{uuid.uuid4().hex[:8]}"
    ids = [store.create_experiment(session, tiny_spec(name=name), "cpu").id for _ in range(7)]
    other = store.create_experiment(session, tiny_spec(name=name + "-other"), "cpu")
    seen, cursor = [], None
    while True:
        page, cursor = store.list_experiments(session, name=name, limit=3, cursor=cursor)
        assert len(page) <= 3
        seen += [e.id for e in page]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert other.id not in seen

    store.request_cancel(session, ids[0])
    cancelled, _ = store.list_experiments(session, name=name, status="cancelled")
    assert [e.id for e in cancelled] == [ids[0]]


def test_pages_stay_stable_while_new_jobs_arrive(session):
    name = f"stable-{uuid.uuid4().hex[:8]}"
    ids = [store.create_experiment(session, tiny_spec(name=name), "cpu").id for _ in range(4)]
    first, cursor = store.list_experiments(session, name=name, limit=2)
    store.create_experiment(session, tiny_spec(name=name), "cpu")  # newer than the cursor
    second, _ = store.list_experiments(session, name=name, limit=2, cursor=cursor)
    assert [e.id for e in first + second] == ids[::-1]


def test_bad_cursor_and_status_are_value_errors(session):
    with pytest.raises(ValueError, match="cursor"):
        store.list_experiments(session, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="status"):
        store.list_experiments(session, status="done")


def test_claim_is_a_compare_and_swap(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    first = store.claim_experiment(session, job.id, "worker-a")
    assert first is not None
    assert (first.status, first.attempt, first.worker) == ("running", 1, "worker-a")
    assert first.started_at is not None and first.heartbeat_at is not None
    # A redelivered message must not start a second copy.
    assert store.claim_experiment(session, job.id, "worker-b") is None
    assert store.get_experiment(session, job.id).worker == "worker-a"


def test_two_threads_claim_and_exactly_one_wins(sessions):
    def claim(job_id: str, worker: str, barrier: threading.Barrier, results: list) -> None:
        with sessions() as s:
            barrier.wait()
            claimed = store.claim_experiment(s, job_id, worker)
            results.append(claimed.worker if claimed else None)

    for _ in range(3):  # a few rounds, each on a fresh job
        with sessions() as s:
            job_id = store.create_experiment(s, tiny_spec(), "cpu").id
        barrier, results = threading.Barrier(4), []
        threads = [
            threading.Thread(target=claim, args=(job_id, f"w{i}", barrier, results))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r is not None]
        assert len(results) == 4 and len(winners) == 1
        with sessions() as s:
            final = store.get_experiment(s, job_id)
        assert final.attempt == 1 and final.worker == winners[0]


def test_progress_only_from_the_running_attempt(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    assert not store.update_progress(session, job.id, 0, step=1, steps_per_s=1.0, eta_s=1.0)
    claimed = store.claim_experiment(session, job.id, "w")
    assert store.update_progress(
        session, job.id, claimed.attempt, step=500, steps_per_s=250.0, eta_s=10.0
    )
    got = store.get_experiment(session, job.id)
    assert (got.step, got.steps_per_s, got.eta_s) == (500, 250.0, 10.0)
    assert got.heartbeat_at >= claimed.heartbeat_at
    # A stale worker from an earlier attempt changes nothing.
    assert not store.update_progress(session, job.id, 99, step=9, steps_per_s=None, eta_s=None)
    assert store.get_experiment(session, job.id).step == 500


def test_cancel_queued_job_is_final_and_never_claimable(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    cancelled = store.request_cancel(session, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert store.claim_experiment(session, job.id, "w") is None
    got = store.get_experiment(session, job.id)
    assert (got.status, got.attempt, got.started_at) == ("cancelled", 0, None)


def test_cancel_running_job_is_cooperative(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    claimed = store.claim_experiment(session, job.id, "w")
    assert not store.cancel_requested(session, job.id)
    asked = store.request_cancel(session, job.id)
    assert asked.status == "running" and asked.cancel_requested
    assert store.cancel_requested(session, job.id)
    assert store.finish_experiment(session, job.id, claimed.attempt, "cancelled")
    got = store.get_experiment(session, job.id)
    assert got.status == "cancelled" and got.finished_at is not None


def test_cancel_of_a_finished_job_changes_nothing(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    claimed = store.claim_experiment(session, job.id, "w")
    store.finish_experiment(session, job.id, claimed.attempt, "succeeded", summary={"a": 1})
    after = store.request_cancel(session, job.id)
    assert after.status == "succeeded" and not after.cancel_requested


def test_finish_is_a_compare_and_swap_on_the_attempt(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    claimed = store.claim_experiment(session, job.id, "w")
    summary = {"memorization_step": 300, "generalization_step": 2100, "final": {"val_acc": 1.0}}
    assert not store.finish_experiment(session, job.id, claimed.attempt + 1, "failed", error="x")
    assert store.finish_experiment(session, job.id, claimed.attempt, "succeeded", summary=summary)
    assert not store.finish_experiment(session, job.id, claimed.attempt, "failed", error="again")
    got = store.get_experiment(session, job.id)
    assert got.status == "succeeded" and got.summary == summary and got.error is None
    assert got.finished_at.tzinfo == timezone.utc
    with pytest.raises(ValueError, match="status"):
        store.finish_experiment(session, job.id, claimed.attempt, "running")


def test_a_job_out_of_attempts_fails_instead_of_starting(session):
    from sqlalchemy import update

    from service.contract.models import Experiment

    job = store.create_experiment(session, tiny_spec(), "cpu")
    session.execute(update(Experiment).where(Experiment.id == job.id).values(attempt=3))
    session.commit()
    assert store.claim_experiment(session, job.id, "w") is None
    got = store.get_experiment(session, job.id)
    assert got.status == "failed" and "3 attempts" in got.error


def test_non_finite_numbers_in_a_summary_are_stored_as_null(session):
    job = store.create_experiment(session, tiny_spec(), "cpu")
    claimed = store.claim_experiment(session, job.id, "w")
    summary = {"final": {"train_loss": float("nan"), "val_loss": float("inf")}, "steps": [1.0]}
    assert store.finish_experiment(session, job.id, claimed.attempt, "failed", summary=summary)
    got = store.get_experiment(session, job.id)
    assert got.summary == {"final": {"train_loss": None, "val_loss": None}, "steps": [1.0]}
