"""The Python client without a service: its events parser on a byte stream, resuming a dropped
stream from the last event id, and the errors it raises before any answer."""
from __future__ import annotations

import json

import httpx
import pytest

from service.client import Client, GroklabError, ServerSentEvent, parse_sse

JOB = {"id": "e1", "status": "running", "progress": {"step": 0, "total_steps": 60}}


class Chunks(httpx.SyncByteStream):
    """A response body sent in these chunks (a generator may raise, as a dropped connection)."""

    def __init__(self, chunks):
        self._chunks = chunks

    def __iter__(self):
        yield from self._chunks


def sse(event: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def metrics_event(step: int) -> bytes:
    return sse("metrics", {"step": step, "points": [
        {"name": "val_acc", "member": 0, "step": step, "value": step / 100},
    ]}, step)


def test_parse_sse_reads_the_events_contract_from_bytes():
    stream = (
        b": ping\n\n"
        + sse("status", JOB)
        + b"id: 20\r\nevent: metrics\r\ndata: {\"step\": 20,\r\ndata:  \"points\": []}\r\n\r\n"
        + b": ping\n\n"
        + b"data: no event name\n\n"
        + b"event: dropped-without-data\n\n"
        + sse("end", {**JOB, "status": "succeeded"})
        + b"event: unfinished\ndata: {}"
    )
    lines = httpx.Response(200, content=stream).iter_lines()
    events = list(parse_sse(lines))
    assert events == [
        ServerSentEvent("status", json.dumps(JOB), None),
        ServerSentEvent("metrics", '{"step": 20,\n "points": []}', "20"),
        ServerSentEvent("message", "no event name", "20"),
        ServerSentEvent("end", json.dumps({**JOB, "status": "succeeded"}), "20"),
    ]
    assert json.loads(events[1].data) == {"step": 20, "points": []}


def test_events_resume_a_dropped_stream_from_the_last_event_id(monkeypatch):
    """The connection drops after step 40: the client asks again with Last-Event-ID: 40 and
    sees every step once, through `end`."""
    monkeypatch.setattr("service.client.rest.time.sleep", lambda s: None)
    asked: list[str | None] = []

    def dropped_after_40():
        yield sse("status", JOB) + metrics_event(20) + metrics_event(40)
        yield b"id: 60\nevent: metr"
        raise httpx.ReadError("connection reset by peer")

    def serve(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/experiments/e1/events"
        asked.append(request.headers.get("Last-Event-ID"))
        if len(asked) == 1:
            return httpx.Response(200, stream=Chunks(dropped_after_40()))
        return httpx.Response(
            200, content=b": ping\n\n" + metrics_event(60) + sse("end", {**JOB, "status": "succeeded"})
        )

    http = httpx.Client(base_url="http://groklab.test", transport=httpx.MockTransport(serve))
    events = list(Client(http=http).events("e1"))
    assert asked == [None, "40"]
    assert [e for e, _ in events] == ["status", "metrics", "metrics", "metrics", "end"]
    assert [d["step"] for e, d in events if e == "metrics"] == [20, 40, 60]
    assert events[-1][1]["status"] == "succeeded"


def test_events_give_up_after_repeated_drops_with_the_one_error_type(monkeypatch):
    monkeypatch.setattr("service.client.rest.time.sleep", lambda s: None)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    http = httpx.Client(base_url="http://groklab.test", transport=httpx.MockTransport(refuse))
    with pytest.raises(GroklabError) as caught:
        list(Client(http=http).events("e1"))
    assert caught.value.status is None
    assert "lost the connection" in caught.value.detail and "connection refused" in caught.value.detail


def test_a_client_without_a_token_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("GROKLAB_TOKEN", raising=False)
    with pytest.raises(GroklabError) as caught:
        Client("http://127.0.0.1:8000")
    assert caught.value.status is None and "GROKLAB_TOKEN" in caught.value.detail


def test_an_unreachable_service_raises_the_one_error_type(monkeypatch):
    monkeypatch.setenv("GROKLAB_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("GROKLAB_TOKEN", "glk_test")
    with Client(timeout=5) as groklab, pytest.raises(GroklabError) as caught:
        groklab.get("e1")
    assert caught.value.status is None and "cannot reach http://127.0.0.1:9" in caught.value.detail


def test_circuit_pictures_wait_through_the_pending_answers(monkeypatch):
    """A picture a worker is still computing answers 202 with Retry-After: the client waits
    that long and asks again until the 200; a 422 is the one error type with its status."""
    slept: list[float] = []
    monkeypatch.setattr("service.client.rest.time.sleep", slept.append)
    asked: list[tuple[str, dict]] = []
    waves = {"step": 400, "member": 1, "p": 47, "neurons": [], "logit": {"answer": 5, "values": []}}

    def serve(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.path, dict(request.url.params)))
        if request.url.path.endswith("/attention"):
            return httpx.Response(422, json={"detail": "the attention picture needs a transformer"})
        if len(asked) < 3:
            return httpx.Response(202, json={"status": "pending", "detail": "queued"},
                                  headers={"Retry-After": "2"})
        return httpx.Response(200, json=waves)

    http = httpx.Client(base_url="http://groklab.test", transport=httpx.MockTransport(serve))
    client = Client(http=http)
    assert client.waves("e1", 400, member=1, neurons=[3, 17], answer=5) == waves
    assert asked == [("/api/v1/experiments/e1/checkpoints/400/waves",
                      {"member": "1", "answer": "5", "neurons": "3,17"})] * 3
    assert slept == [2.0, 2.0]
    with pytest.raises(GroklabError) as caught:
        client.attention("e1", 400)
    assert caught.value.status == 422 and "transformer" in caught.value.detail
