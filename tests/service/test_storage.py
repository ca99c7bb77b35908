"""Checkpoint storage with bounded memory, on SQLite and PostgreSQL: bytes in 1 MiB chunks,
downloads streamed a chunk at a time and still verified, retention, the per-owner storage
quota, paginated checkpoint lists, deduplicated checkpoint-analysis requests, and an analysis
whose cost does not grow with the run."""
from __future__ import annotations

import hashlib
import uuid

import pytest
from alembic import command
from sqlalchemy import event, func, select, text

from service import store
from service.contract.models import CHECKPOINT_CHUNK_BYTES, CheckpointChunk
from service.contract.settings import Settings
from service.infra.db import alembic_config, make_engine, migrate
from service.science.grokking import grokking_summary
from service.store.retention import CheckpointRetention, retained_steps
from tests.service.blobs import checkpoint_bytes, overwrite_checkpoint_bytes
from tests.builders import tiny_spec
from tests.service.specs import API, TINY

QUOTA = 3 * CHECKPOINT_CHUNK_BYTES
# A checkpoint of three chunks, the last one partial.
BIG = checkpoint_bytes(bytes(range(256)) * (10 * 1024 + 123))


@pytest.fixture
def api_settings(tmp_path, db_url) -> Settings:
    """The API on both backends, with two analysis attempts."""
    return Settings(
        data_dir=tmp_path, database_url=db_url, max_page_size=20, reaper_interval_s=0,
        analysis_max_attempts=2,
    )


@pytest.fixture
def experiment_id(session) -> str:
    return store.create_experiment(session, tiny_spec(), "cpu").id


def submit(client, body=None) -> dict:
    r = client.post(API, json=body or TINY)
    assert r.status_code == 201, r.text
    return r.json()


# ---- chunks ------------------------------------------------------------------------------------


def test_bytes_are_stored_in_chunks_and_read_back_whole(session, experiment_id):
    checkpoint = store.add_checkpoint(session, experiment_id, 10, BIG, {"k": "v"})
    assert checkpoint.size == len(BIG) and checkpoint.sha256 == hashlib.sha256(BIG).hexdigest()
    sizes = session.execute(
        select(func.length(CheckpointChunk.data))
        .where(CheckpointChunk.experiment_id == experiment_id)
        .order_by(CheckpointChunk.seq)
    ).scalars().all()
    session.commit()
    assert sizes == [CHECKPOINT_CHUNK_BYTES] * 2 + [len(BIG) - 2 * CHECKPOINT_CHUNK_BYTES]
    assert [len(c) for c in store.checkpoint_chunks(session, checkpoint)] == sizes
    assert store.load_checkpoint_verified(session, experiment_id) == BIG
    # An empty blob is one empty chunk, and still round-trips.
    store.add_checkpoint(session, experiment_id, 20, b"", {})
    assert store.read_checkpoint(session, store.get_checkpoint(session, experiment_id, 20)) == b""


def test_a_changed_byte_in_a_later_chunk_is_caught(session, experiment_id):
    store.add_checkpoint(session, experiment_id, 10, BIG, {})
    flipped = bytearray(BIG)
    flipped[2 * CHECKPOINT_CHUNK_BYTES + 5] ^= 1
    overwrite_checkpoint_bytes(session, experiment_id, 10, bytes(flipped))
    with pytest.raises(store.CheckpointCorrupt, match="sha256"):
        store.load_checkpoint_verified(session, experiment_id, 10)
    assert not store.checkpoint_intact(session, store.get_checkpoint(session, experiment_id, 10))


def test_existing_blobs_are_moved_into_chunks_by_the_migration(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0007-1")
    engine = make_engine(url)
    old = b"x" * (CHECKPOINT_CHUNK_BYTES + 10)
    with engine.begin() as c:
        c.execute(text(
            "INSERT INTO experiments (id, name, owner, status, spec, queue, step, total_steps, "
            "created_at, attempt, max_attempts, cancel_requested) VALUES ('e', 'n', 'local', "
            "'succeeded', '{}', 'cpu', 0, 1, '2026-01-01', 0, 3, 0)"
        ))
        c.execute(text("INSERT INTO checkpoints VALUES ('e', 5, :n, :h, :d, '{}', '2026-01-01')"),
                  {"n": len(old), "h": hashlib.sha256(old).hexdigest(), "d": old})
        c.execute(text("INSERT INTO analysis_cache VALUES ('e', 5, :d, '2026-01-01')"),
                  {"d": '{"step": 5, "error": "it broke"}'})
    migrate(url)
    with engine.connect() as c:
        chunks = c.execute(text("SELECT data FROM checkpoint_chunks ORDER BY seq")).scalars().all()
        cached = c.execute(text("SELECT status, error, data, kind FROM analysis_cache")).one()
    engine.dispose()
    assert b"".join(chunks) == old and len(chunks) == 2
    assert tuple(cached) == ("failed", "it broke", None, "fourier")  # 0009: every row's kind


# ---- the download streams ----------------------------------------------------------------------


def test_a_multi_chunk_checkpoint_downloads_whole_with_its_digest(client, api_sessions):
    job = submit(client)
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 30, BIG, {})
    with client.stream("GET", f"{API}/{job['id']}/checkpoints/30") as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(BIG))
        assert r.headers["x-checksum-sha256"] == hashlib.sha256(BIG).hexdigest()
        received = b"".join(r.iter_bytes())
    assert received == BIG


def test_a_corrupt_multi_chunk_checkpoint_is_refused_before_any_byte(client, api_sessions):
    job = submit(client)
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 30, BIG, {})
        overwrite_checkpoint_bytes(s, job["id"], 30, BIG[:-1] + b"!")
    r = client.get(f"{API}/{job['id']}/checkpoints/30")
    assert r.status_code == 409 and "sha256" in r.json()["detail"]


# ---- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_last_the_milestones_and_the_grokking_steps():
    steps = list(range(100, 3001, 100))
    kept = retained_steps(steps, CheckpointRetention(keep_last=3), landmarks=(650, 2000))
    assert kept == {
        2800, 2900, 3000,  # the last three
        100, 200, 300, 600, 1100, 2100,  # the first at or after 1, 2, ..., 256, 512, 1024, 2048
        600, 700, 1900, 2000,  # either side of the memorisation and generalisation steps
    }
    assert retained_steps(steps, CheckpointRetention(keep_last=0)) == set(steps)


def test_retention_applies_as_checkpoints_are_written(session, experiment_id):
    rows = [{"step": s, "member": 0, "name": "train_acc", "value": 1.0 if s >= 250 else 0.1}
            for s in range(0, 1001, 50)]
    store.ingest_metrics(session, experiment_id, rows)
    policy = CheckpointRetention(keep_last=2, milestones=False)
    for step in range(100, 1001, 100):
        store.add_checkpoint(session, experiment_id, step, b"at %d" % step, {}, retention=policy)
    # the last two, and those either side of the memorisation step (250)
    assert [c.step for c in store.list_checkpoints(session, experiment_id)] == [200, 300, 900, 1000]
    chunk_steps = session.scalars(
        select(CheckpointChunk.step).where(CheckpointChunk.experiment_id == experiment_id)
    ).all()
    session.commit()
    assert sorted(chunk_steps) == [200, 300, 900, 1000]  # their bytes went with them
    latest = store.get_checkpoint(session, experiment_id, 1000)
    assert store.read_checkpoint(session, latest) == b"at 1000"


# ---- quota and paging --------------------------------------------------------------------------


def test_an_owner_over_its_storage_quota_cannot_submit(
    client, api_sessions, make_token, monkeypatch
):
    monkeypatch.setattr(client.app.state.settings, "storage_quota_bytes", QUOTA)

    def token_of_a_new_owner() -> tuple[str, dict]:
        owner = f"quota-{uuid.uuid4().hex[:8]}"
        return owner, {"Authorization": f"Bearer {make_token(owner, 'write')}"}

    owner, headers = token_of_a_new_owner()
    job = client.post(API, json=TINY, headers=headers).json()
    with api_sessions() as s:
        store.add_checkpoint(s, job["id"], 10, BIG, {})
        store.add_checkpoint(s, job["id"], 20, BIG, {})
        assert store.owner_checkpoint_bytes(s, owner) == 2 * len(BIG) >= QUOTA
    r = client.post(API, json=TINY, headers=headers)
    assert r.status_code == 507
    assert "storage quota" in r.json()["detail"] and str(QUOTA) in r.json()["detail"]
    r = client.post("/api/v1/sweeps", json={"name": "s", "base": TINY,
                                            "grid": {"training.seed": [1, 2]}}, headers=headers)
    assert r.status_code == 507
    _, other = token_of_a_new_owner()
    assert client.post(API, json=TINY, headers=other).status_code == 201  # not held back


def test_checkpoint_lists_come_in_pages(client, api_sessions):
    job = submit(client)
    with api_sessions() as s:
        for step in (10, 20, 30, 40, 50):
            store.add_checkpoint(s, job["id"], step, checkpoint_bytes(b"%d" % step), {})
    url = f"{API}/{job['id']}/checkpoints"
    pages, params = [], {"limit": 2}
    while True:
        r = client.get(url, params=params)
        assert r.status_code == 200, r.text
        pages.append([c["step"] for c in r.json()])
        if "x-next-cursor" not in r.headers:
            break
        params = {"limit": 2, "cursor": r.headers["x-next-cursor"]}
    assert pages == [[10, 20], [30, 40], [50]]
    assert set(r.json()[0]) == {"step", "size", "sha256", "created_at", "meta"}
    assert [c["step"] for c in client.get(url).json()] == [10, 20, 30, 40, 50]
    bad = client.get(url, params={"cursor": "later"})
    assert bad.status_code == 422 and "cursor" in bad.text
    bad = client.get(url, params={"limit": 21})
    assert bad.status_code == 422 and "limit must be at most 20" in bad.text


# ---- checkpoint analysis requests --------------------------------------------------------------


def test_analysis_requests_are_deduplicated_and_failures_cached(client, api_sessions, enqueued):
    from worker.checkpoint_analysis import analyze_checkpoint

    settings = client.app.state.settings
    job = submit(client)
    with api_sessions() as s:  # a valid checkpoint without a model's tensors: the engine fails
        store.add_checkpoint(s, job["id"], 30, checkpoint_bytes(b"no model"), {})
    url = f"{API}/{job['id']}/checkpoints/30/analysis"

    def analysis_tasks() -> list:
        return [e for e in enqueued if e == (job["id"], "analysis")]

    assert [client.get(url).status_code for _ in range(2)] == [202, 202]
    assert len(analysis_tasks()) == 1  # the second request found it pending
    assert analyze_checkpoint(job["id"], 30, settings) == "failed"

    r = client.get(url)  # attempt 2 of 2
    assert r.status_code == 202 and "attempt 2 of 2" in r.json()["detail"]
    assert len(analysis_tasks()) == 2
    assert analyze_checkpoint(job["id"], 30, settings) == "failed"
    for _ in range(2):
        r = client.get(url)
        assert r.status_code == 409
        assert r.json()["detail"].startswith("the analysis of step 30 failed: ")
    assert len(analysis_tasks()) == 2  # no attempts left: the failure is the answer


# ---- GET .../analysis reads a bounded number of rows -------------------------------------------


def _eval_rows(evals: int, every: int) -> list[dict]:
    """A run that memorises at 30% of its length and generalises at 60%."""
    rows = []
    for i in range(evals):
        step = i * every
        progress = i / evals
        for name, value in (
            ("train_acc", 1.0 if progress >= 0.3 else progress),
            ("val_acc", 1.0 if progress >= 0.6 else 0.1),
            ("train_loss", 1 - progress), ("val_loss", 2 - progress),
            ("weight_norm", 10 - progress),
        ):
            rows.append({"step": step, "member": 0, "name": name, "value": value})
    return rows


def _rows_read(client, api_sessions, monkeypatch, evals: int) -> tuple[int, dict]:
    from service.store import dialect, metrics_query, series_summary

    job = submit(client)
    with api_sessions() as s:
        store.ingest_metrics(s, job["id"], _eval_rows(evals, 10))
    counted = {"rows": 0}
    real_fetch = dialect.fetch

    def counting_fetch(session, sql, params):
        rows = real_fetch(session, sql, params)
        counted["rows"] += len(rows)
        return rows

    monkeypatch.setattr(metrics_query, "fetch", counting_fetch)
    monkeypatch.setattr(series_summary, "fetch", counting_fetch)
    engine = api_sessions.kw["bind"]

    def count_orm_rows(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and cursor.description:
            counted["rows"] += 1  # the ORM reads single rows here (experiment, series list)

    event.listen(engine, "after_cursor_execute", count_orm_rows)
    try:
        body = client.get(f"{API}/{job['id']}/analysis").json()
    finally:
        event.remove(engine, "after_cursor_execute", count_orm_rows)
        monkeypatch.undo()
    return counted["rows"], body


def test_analysis_reads_a_bounded_number_of_rows(client, api_sessions, monkeypatch, backend):
    short_rows, short = _rows_read(client, api_sessions, monkeypatch, 500)
    long_rows, long = _rows_read(client, api_sessions, monkeypatch, 10_000)
    # 10 000 evals of 5 series: 50 000 points; the answer reads a bounded number of rows.
    assert long_rows < 100 and long_rows <= short_rows + 10, (short_rows, long_rows)
    for evals, body in ((500, short), (10_000, long)):
        rows = _eval_rows(evals, 10)
        pairs = {n: [(r["step"], r["value"]) for r in rows if r["name"] == n]
                 for n in ("train_acc", "val_acc")}
        expected = grokking_summary(pairs["train_acc"], pairs["val_acc"])
        assert {k: body["summary"][k] for k in expected} == expected
        assert body["summary"]["final"]["weight_norm"]["step"] == (evals - 1) * 10
