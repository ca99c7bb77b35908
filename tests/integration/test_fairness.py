"""Fair order on the real stack: one owner's backlog does not starve another owner's job."""
from __future__ import annotations

import httpx
import pytest

from service.access import auth
from service.infra.db import make_engine, make_sessionmaker
from tests.builders import tiny_job
from tests.integration.conftest import wait_for_status

pytestmark = pytest.mark.integration


def owner_client(stack, owner: str) -> httpx.Client:
    engine = make_engine(stack.database_url)
    with make_sessionmaker(engine)() as session:
        token = auth.create_token(session, owner, "write")[1]
    engine.dispose()
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def test_a_worker_serves_the_second_owner_before_the_first_owners_backlog(stack):
    """Owner A queues four jobs, then owner B one, while the stack's one worker is busy with A's
    first: it runs B's next (FIFO would have run it last), then A's others."""
    with owner_client(stack, "fair-a") as a, owner_client(stack, "fair-b") as b:
        a_ids = []
        for i, steps in enumerate((200, 10, 10, 10)):  # the first keeps the worker busy
            r = a.post("/api/v1/experiments", json=tiny_job(f"a{i}", steps=steps,
                                                           checkpoint_every=steps))
            assert r.status_code == 201, r.text
            a_ids.append(r.json()["id"])
        r = b.post("/api/v1/experiments", json=tiny_job("b0", steps=10, checkpoint_every=10))
        assert r.status_code == 201, r.text
        b_id = r.json()["id"]
        done = {i: wait_for_status(stack.client, i, timeout=120) for i in [*a_ids, b_id]}
    assert all(job["status"] == "succeeded" for job in done.values()), done
    order = sorted(done, key=lambda i: done[i]["started_at"])
    assert order == [a_ids[0], b_id, *a_ids[1:]]
