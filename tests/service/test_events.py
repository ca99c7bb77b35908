"""Live events (GET .../events) and ETag/304 on the polled routes, through the API."""
from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient

from service import store
from service.app import create_app
from service.contract.settings import Settings
from service.infra.db import migrate
from tests.service.specs import API, TINY

NAMES = ("train_loss", "val_loss")


def rows(steps) -> list[dict]:
    return [{"name": n, "member": 0, "step": s, "value": 1.0 / (s + 1)}
            for s in steps for n in NAMES]


def points(steps) -> list[tuple[str, int, int]]:
    return sorted((n, 0, s) for s in steps for n in NAMES)


def iter_events(response):
    """The events of an SSE response as dicts (event, id, data), comments left out."""
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            event[key] = value.removeprefix(" ")


def read_events(response, on_event=lambda event: None) -> list[dict]:
    """The events of an SSE response, up to and including `end`."""
    events = []
    for event in iter_events(response):
        events.append(event)
        on_event(event)
        if event["event"] == "end":
            break
    return events


def received_points(events: list[dict]) -> list[tuple[str, int, int]]:
    return [(p["name"], p["member"], p["step"])
            for e in events if e["event"] == "metrics" for p in json.loads(e["data"])["points"]]


@pytest.fixture
def running(client):
    """A submitted job, claimed as a worker would: (experiment id, attempt)."""
    exp_id = client.post(API, json=TINY).json()["id"]
    with client.app.state.sessions() as s:
        attempt = store.claim_experiment(s, exp_id, "test-worker").attempt
    return exp_id, attempt


def store_steps(client, exp_id: str, attempt: int, steps) -> None:
    with client.app.state.sessions() as s:
        store.ingest_metrics(s, exp_id, rows(steps), attempt=attempt)
        store.update_progress(s, exp_id, attempt, step=max(steps), steps_per_s=1.0, eta_s=1.0)


def finish(client, exp_id: str, attempt: int) -> None:
    with client.app.state.sessions() as s:
        assert store.finish_experiment(s, exp_id, attempt, "succeeded", summary={})


def test_a_finished_job_streams_status_then_every_point_then_end(client, running):
    exp_id, attempt = running
    store_steps(client, exp_id, attempt, range(10))
    finish(client, exp_id, attempt)

    with client.stream("GET", f"{API}/{exp_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r)

    assert [e["event"] for e in events] == ["status", "metrics", "end"]
    # The job as GET returns it, less its spec (which a status frame leaves out)
    job = client.get(f"{API}/{exp_id}").json()
    assert "spec" in job and json.loads(events[0]["data"]) == {
        k: v for k, v in job.items() if k != "spec"}
    assert events[1]["id"] == "9" and json.loads(events[1]["data"])["step"] == 9
    assert sorted(received_points(events)) == points(range(10))
    assert json.loads(events[2]["data"])["status"] == "succeeded"


def test_last_event_id_replays_only_the_later_steps(client, running):
    exp_id, attempt = running
    store_steps(client, exp_id, attempt, range(10))
    finish(client, exp_id, attempt)

    with client.stream("GET", f"{API}/{exp_id}/events", headers={"Last-Event-ID": "6"}) as r:
        events = read_events(r)
    assert sorted(received_points(events)) == points(range(7, 10))

    with client.stream("GET", f"{API}/{exp_id}/events", headers={"Last-Event-ID": "9"}) as r:
        assert [e["event"] for e in read_events(r)] == ["status", "end"]

    bad = client.get(f"{API}/{exp_id}/events", headers={"Last-Event-ID": "seven"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def events_client(folder, **settings):
    """A client (alice's write token) of an app with these settings; .token_id is its token's."""
    folder.mkdir()
    app_settings = Settings(data_dir=folder, **settings)
    migrate(app_settings.resolved_database_url)
    app = create_app(app_settings)
    from service.access import auth

    with app.state.sessions() as s:
        row, token = auth.create_token(s, "alice", "write")
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    client.token_id = row.id
    return client


@pytest.fixture
def fast_client(tmp_path, enqueued):
    """A client of an app whose event hub reads every 50 ms."""
    with events_client(tmp_path / "fast", events_poll_s=0.05) as c:
        yield c


def test_a_watcher_of_a_running_job_gets_live_points_once_each_and_the_end(fast_client):
    client = fast_client
    exp_id = client.post(API, json=TINY).json()["id"]
    with client.app.state.sessions() as s:
        attempt = store.claim_experiment(s, exp_id, "test-worker").attempt
    store_steps(client, exp_id, attempt, range(0, 5))
    replayed = threading.Event()

    def train() -> None:  # what a worker stores while the watcher watches
        replayed.wait(30)
        for start in range(5, 40, 5):
            store_steps(client, exp_id, attempt, range(start, start + 5))
        finish(client, exp_id, attempt)

    writer = threading.Thread(target=train)
    writer.start()
    with client.stream("GET", f"{API}/{exp_id}/events", headers={"Last-Event-ID": "2"}) as r:
        events = read_events(r, lambda e: e["event"] == "metrics" and replayed.set())
    writer.join()

    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and "metrics" in kinds
    got = received_points(events)
    assert len(got) == len(set(got)) and sorted(got) == points(range(3, 40))
    ids = [int(e["id"]) for e in events if e["event"] == "metrics"]
    assert ids[0] == 4 and ids == sorted(set(ids)) and ids[-1] == 39  # replay, then live
    assert json.loads(events[-1]["data"])["progress"]["step"] == 39


def test_status_metrics_and_analysis_answer_304_while_unchanged(client, running):
    exp_id, attempt = running
    store_steps(client, exp_id, attempt, range(3))
    for path in (f"{API}/{exp_id}", f"{API}/{exp_id}/metrics?format=csv",
                 f"{API}/{exp_id}/metrics", f"{API}/{exp_id}/analysis"):
        first = client.get(path)
        assert first.status_code == 200 and first.headers["etag"], path
        again = client.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert (again.status_code, again.content) == (304, b""), path
        assert again.headers["etag"] == first.headers["etag"]
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200

    paths = (f"{API}/{exp_id}", f"{API}/{exp_id}/metrics")
    tags = {p: client.get(p).headers["etag"] for p in paths}
    other_query = client.get(f"{API}/{exp_id}/metrics", params={"names": "val_loss"})
    assert other_query.headers["etag"] != tags[f"{API}/{exp_id}/metrics"]
    store_steps(client, exp_id, attempt, range(3, 6))  # new points and progress
    for path, tag in tags.items():
        changed = client.get(path, headers={"If-None-Match": tag})
        assert changed.status_code == 200 and changed.headers["etag"] != tag, path


# ---- limits ----------------------------------------------------------------------------------


def running_job(client) -> str:
    exp_id = client.post(API, json=TINY).json()["id"]
    with client.app.state.sessions() as s:
        store.claim_experiment(s, exp_id, "test-worker")
    return exp_id


def test_streams_past_the_tokens_limit_are_429_until_one_closes(tmp_path, enqueued):
    with events_client(tmp_path / "app", events_poll_s=0.05, events_max_streams_per_token=2) as client:
        exp_id = running_job(client)
        url = f"{API}/{exp_id}/events"
        with client.stream("GET", url) as one, client.stream("GET", url) as two:
            assert one.status_code == two.status_code == 200
            third = client.get(url)
            assert third.status_code == 429 and "2 live-event streams" in third.json()["detail"]
            assert third.headers["Retry-After"]
        # both closed: the token's count is back to none
        assert client.app.state.events_hub.streams == {}
        with client.stream("GET", url) as again:
            assert again.status_code == 200


def test_a_stream_ends_after_its_lifetime_and_resumes_with_last_event_id(tmp_path, enqueued):
    with events_client(tmp_path / "app", events_poll_s=0.05, events_max_lifetime_s=0.5) as client:
        exp_id = running_job(client)
        with client.app.state.sessions() as s:
            attempt = store.get_experiment(s, exp_id).attempt
        store_steps(client, exp_id, attempt, range(3))
        with client.stream("GET", f"{API}/{exp_id}/events") as r:
            events = list(iter_events(r))  # ends by itself: the job still runs
        assert [e["event"] for e in events] == ["status", "metrics"]
        store_steps(client, exp_id, attempt, range(3, 6))
        with client.stream("GET", f"{API}/{exp_id}/events",
                           headers={"Last-Event-ID": events[-1]["id"]}) as r:
            resumed = list(iter_events(r))
        assert sorted(received_points(events + resumed)) == points(range(6))


def test_a_revoked_tokens_stream_ends_at_the_next_check(tmp_path, enqueued):
    from service.access import auth

    with events_client(tmp_path / "app", events_poll_s=0.05, events_ping_s=0.2) as client:
        exp_id = running_job(client)
        with client.stream("GET", f"{API}/{exp_id}/events") as r:
            events = []
            for event in iter_events(r):
                events.append(event)
                if len(events) == 1:  # the status: revoke while it streams
                    with client.app.state.sessions() as s:
                        auth.revoke_token(s, client.token_id)
        assert [e["event"] for e in events] == ["status", "error"]
        assert json.loads(events[-1]["data"]) == {"detail": "the token was revoked"}
        assert client.get(f"{API}/{exp_id}/events").status_code == 401


def test_a_watcher_gets_events_while_the_last_ones_listener_lingers(tmp_path, enqueued):
    """The poll ends when the last watcher leaves; the Redis listener may still be alive a
    moment longer. A watcher that comes then must start the poll again, not get only pings."""
    import asyncio

    from service.infra.events import EventHub

    with events_client(tmp_path / "app", events_poll_s=0.05) as client:
        exp_id = running_job(client)
        with client.app.state.sessions() as s:
            attempt = store.get_experiment(s, exp_id).attempt

        async def scenario() -> list:
            hub = EventHub(client.app.state.sessions, client.app.state.settings)
            first = await hub.subscribe(exp_id)
            hub.unsubscribe(exp_id, first)
            await asyncio.sleep(0.3)
            assert hub._poller.done()  # no watcher: the poll ended
            hub.redis_url = "redis://listening"  # a listener still alive, as after a note
            hub._listener = asyncio.create_task(asyncio.sleep(30))
            second = await hub.subscribe(exp_id)
            store_steps(client, exp_id, attempt, range(2))
            try:
                return [await asyncio.wait_for(second.queue.get(), 3.0)]
            finally:
                hub._listener.cancel()
                hub.unsubscribe(exp_id, second)

        kind, _ = asyncio.run(scenario())[0]
        assert kind in ("metrics", "status")
