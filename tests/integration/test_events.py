"""Live events through the real stack: a worker's recorder publishes on Redis, the API's hub
streams to a watcher over HTTP; a dropped watcher resumes with Last-Event-ID."""
from __future__ import annotations

import json

import pytest

from tests.builders import tiny_job
from tests.integration.conftest import wait_for_status
from tests.service.test_events import iter_events

pytestmark = pytest.mark.integration

API = "/api/v1/experiments"


def stream_points(events: list[dict]) -> list[tuple[str, int, int]]:
    return [(p["name"], p["member"], p["step"])
            for e in events if e["event"] == "metrics" for p in json.loads(e["data"])["points"]]


def test_a_watcher_sees_a_job_live_and_resumes_after_a_drop_without_loss_or_repeat(stack):
    client = stack.client
    job = client.post(API, json=tiny_job("watched", steps=200, eval_every=50,
                                         checkpoint_every=100)).json()
    url = f"{API}/{job['id']}/events"

    first: list[dict] = []
    with client.stream("GET", url, timeout=60) as r:
        assert r.status_code == 200
        for event in iter_events(r):
            first.append(event)
            if event["event"] in ("metrics", "end"):
                break  # drop the connection mid-run
    assert first[0]["event"] == "status" and json.loads(first[0]["data"])["id"] == job["id"]
    last_id = [e["id"] for e in first if e["event"] == "metrics"][-1]

    second: list[dict] = []
    if first[-1]["event"] != "end":
        with client.stream("GET", url, headers={"Last-Event-ID": last_id}, timeout=60) as r:
            for event in iter_events(r):
                second.append(event)
                if event["event"] == "end":
                    break
        assert second[0]["event"] == "status"
    end = (first + second)[-1]
    assert end["event"] == "end" and json.loads(end["data"])["status"] == "succeeded"
    assert all(int(e["id"]) > int(last_id) for e in second if e["event"] == "metrics")

    got = stream_points(first) + stream_points(second)
    assert len(got) == len(set(got)), "a point was sent twice"
    stored = client.get(f"{API}/{job['id']}/metrics", params={"max_points": 20000}).json()
    expected = {(s["name"], s["member"], step) for s in stored["series"] for step in s["steps"]}
    assert set(got) == expected
    assert wait_for_status(client, job["id"])["status"] == "succeeded"
