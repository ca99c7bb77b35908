"""The active-jobs quota under concurrent submissions: several API processes on one database,
each POSTing sweeps for one owner at the same moment, never put more of the owner's jobs in
the queue than its limit (the count and the insert run in one transaction under the owner's
lock). On SQLite and PostgreSQL."""
from __future__ import annotations

import multiprocessing
import uuid

from service import store
from service.access import auth

PROCESSES = 4
SWEEPS_EACH = 3
MEMBERS = 4
LIMIT = 10


def submit_sweeps(url: str, data_dir: str, token: str, start) -> list[int]:
    """One API process: its own app and engine on the shared database; POST SWEEPS_EACH sweeps
    of MEMBERS members once every process is ready. Returns the status codes."""
    from fastapi.testclient import TestClient

    from service.api.deps import get_enqueue
    from service.app import create_app
    from service.contract.settings import Settings

    settings = Settings(database_url=url, data_dir=data_dir, worker_processes=2, worker_gpus=0,
                        reaper_interval_s=0)
    app = create_app(settings)
    app.dependency_overrides[get_enqueue] = lambda: (lambda job_id, queue: None)
    client = TestClient(app, raise_server_exceptions=False,
                        headers={"Authorization": f"Bearer {token}"})
    sweep = {"name": "race", "base": {"name": "m", "preset": "ci-small",
                                      "model": {"d_model": 16, "n_heads": 2, "d_mlp": 32},
                                      "training": {"steps": 60}},
             "grid": {"training.seed": list(range(MEMBERS))}}
    start.wait()
    return [client.post("/api/v1/sweeps", json=sweep).status_code for _ in range(SWEEPS_EACH)]


def test_concurrent_sweeps_across_processes_never_exceed_the_active_limit(db_url, sessions,
                                                                         tmp_path):
    owner = f"racer-{uuid.uuid4().hex[:8]}"
    with sessions() as s:
        token = auth.create_token(s, owner, "write", max_active_jobs=LIMIT,
                                  submissions_per_minute=1000)[1]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(PROCESSES) as pool:
        start = manager.Barrier(PROCESSES)
        codes = pool.starmap(submit_sweeps, [(db_url, str(tmp_path / f"api{i}"), token, start)
                                             for i in range(PROCESSES)], chunksize=1)
    codes = [code for each in codes for code in each]
    assert set(codes) <= {201, 429}, codes
    with sessions() as s:
        active = store.active_jobs(s, owner)
        s.commit()
    assert active <= LIMIT, f"{active} active jobs over a limit of {LIMIT}: {codes}"
    # Every sweep that fitted was accepted: as many as fit in the limit, whole.
    assert codes.count(201) == LIMIT // MEMBERS and active == codes.count(201) * MEMBERS, codes
