"""Alerts: a spec's notify sends signed events to an allowed host, and only to one.

A local receiver (http.server on 127.0.0.1, in a thread) stands in for the user's endpoint; the
worker's runner runs in-process on the API's own database.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service import store
from service.contract.notify import (
    NOTIFY_EVENTS,
    SIGNATURE_HEADER,
    host_allowed,
    parse_allowed_hosts,
    signature,
    signature_matches,
)
from service.contract.settings import Settings
from service.infra.db import migrate
from tests.service.specs import API, TINY


class Receiver:
    """Records every POST (path, headers, body); answers with `statuses` in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, bytes]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    if status == 200:
                        receiver.requests.append((self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/groklab"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> list[dict]:
        """The payloads received, each checked against its signature."""
        out = []
        for _, headers, body in self.requests:
            assert signature_matches(secret, body, headers[SIGNATURE_HEADER]), headers
            out.append(json.loads(body))
        return out


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def api_settings(tmp_path: Path, receiver: Receiver) -> Settings:
    """The API's and the worker's settings: the receiver's host:port is allowed."""
    settings = Settings(
        data_dir=tmp_path, max_body_bytes=64 * 1024, max_page_size=20,
        notify_allowed_hosts=f"example.org, 127.0.0.1:{receiver.port}", heartbeat_s=60,
    )
    migrate(settings.resolved_database_url)
    return settings


@pytest.fixture
def secret(api_sessions) -> str:
    with api_sessions() as s:
        return store.set_webhook_secret(s, "alice")


def notify_body(url: str) -> dict:
    return {**TINY, "analysis": {"every": None}, "notify": {"url": url}}


# Memorises at ~step 100, generalises at ~160, and ungroks once its training set is cut to 5% of
# the pairs at step 240 (tests/engine/test_schedule.py: FAST_UNGROK). About 2 s of training.
UNGROKS = {
    "name": "ungrokking", "preset": "ci-small",
    "model": {"d_model": 32, "n_heads": 2, "d_mlp": 64}, "optimizer": {"lr": 1e-2},
    "training": {"steps": 500, "eval_every": 20, "seed": 1, "checkpoint_every": 1000},
    "analysis": {"every": None}, "data_schedule": [{"at_step": 240, "train_fraction": 0.05}],
}


def run_in_process(experiment_id: str, settings: Settings) -> str:
    from worker.jobs import run_job

    return run_job(experiment_id, "test-worker", settings=settings)


def test_a_run_posts_signed_events_in_order(client, api_settings, receiver, secret):
    r = client.post(API, json={**UNGROKS, "notify": {"url": receiver.url}})
    assert r.status_code == 201, r.text
    exp_id = r.json()["id"]

    assert run_in_process(exp_id, api_settings) == "succeeded"

    events = receiver.events(secret)
    assert [e["event"] for e in events] == ["memorized", "grokked", "ungrokked", "finished"]
    memorized, grokked, ungrokked, finished = events
    summary = client.get(f"{API}/{exp_id}").json()["summary"]
    assert receiver.requests[0][0] == "/hooks/groklab"
    assert memorized["experiment_id"] == exp_id and memorized["name"] == "ungrokking"
    assert memorized["status"] == "running" and memorized["member"] == 0
    assert memorized["metrics"]["train_acc"] >= 0.99
    assert memorized["step"] == summary["memorization_step"]
    assert grokked["step"] == summary["generalization_step"] < 240
    assert grokked["metrics"]["val_acc"] >= 0.99
    # at or after the cut (at step 240 itself the evaluation already sees the new split)
    assert ungrokked["step"] >= 240 and ungrokked["metrics"]["val_acc"] < 0.99
    assert ungrokked["metrics"]["train_acc"] >= 0.99
    assert finished["status"] == "succeeded" and finished["step"] == 500
    assert finished["summary"]["generalization_step"] == grokked["step"]
    assert finished["summary"]["final_val_acc"] == summary["final_val_acc"] < 0.5
    # a forged or altered body does not match the signature
    _, headers, body = receiver.requests[-1]
    assert not signature_matches(secret, body.replace(b"succeeded", b"failed"), headers[SIGNATURE_HEADER])
    assert not signature_matches("whsec_other", body, headers[SIGNATURE_HEADER])


def test_a_signature_covers_the_time_and_a_replay_is_refused():
    secret, body = "whsec_test", b'{"event":"grokked"}'
    header = signature(secret, body, timestamp=1_700_000_000)
    t, mac = header.split(",")
    assert t == "t=1700000000" and mac.startswith("v1=") and len(mac) == 3 + 64
    assert signature_matches(secret, body, header, now=1_700_000_000 + 299)
    # the same delivery captured and sent again ten minutes later
    assert not signature_matches(secret, body, header, now=1_700_000_000 + 600)
    # a replay with a fresh time but the old MAC
    assert not signature_matches(secret, body, f"t=1700000600,{mac}", now=1_700_000_600)
    for bad in (None, "", "sha256=abc", "t=soon,v1=00", "v1=" + "0" * 64):
        assert not signature_matches(secret, body, bad, now=1_700_000_000)


def test_each_member_of_a_pack_reports_its_own_events(client, api_settings, receiver, secret):
    r = client.post("/api/v1/sweeps", json={
        "base": {**UNGROKS, "notify": {"url": receiver.url}}, "grid": {"training.seed": [0, 1]},
        "pack_size": 2,  # one pack of both, whatever the worker plan
    })
    assert r.status_code == 201, r.text
    seed0, seed1 = r.json()["experiment_ids"]
    with client.app.state.sessions() as s:
        pack_id = store.get_experiment(s, seed0).pack_id

    assert run_in_process(pack_id, api_settings) == "succeeded"

    by_experiment: dict[str, list[dict]] = {}
    for event in receiver.events(secret):
        by_experiment.setdefault(event["experiment_id"], []).append(event)
    assert [e["event"] for e in by_experiment[seed1]] == ["memorized", "grokked", "ungrokked", "finished"]
    assert by_experiment[seed1][-1]["name"] == "sweep[seed=1]"
    assert all(e.get("member", 0) == 0 for e in by_experiment[seed1])
    # seed 0 peaks at val_acc ~0.98: it memorises, never reaches 0.99, and finishes
    assert [e["event"] for e in by_experiment[seed0]] == ["memorized", "finished"]
    assert by_experiment[seed0][-1]["summary"]["generalization_step"] is None


def test_only_the_events_asked_for_are_sent_and_a_failure_is_one(
    client, api_settings, receiver, secret, monkeypatch
):
    from worker.engine.train import Trainer

    def broken_run(self, **callbacks):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(Trainer, "run", broken_run)
    body = notify_body(receiver.url)
    body["notify"]["events"] = ["failed"]
    exp_id = client.post(API, json=body).json()["id"]

    assert run_in_process(exp_id, api_settings) == "failed"

    (failed,) = receiver.events(secret)
    assert failed["event"] == "failed" and failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: the GPU caught fire"


def test_a_disallowed_host_is_refused_at_submit(client, receiver, secret):
    r = client.post(API, json=notify_body(f"http://127.0.0.1:{receiver.port + 1}/x"))
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "notify", "url"]
    assert "GROKLAB_NOTIFY_ALLOWED_HOSTS" in error["msg"] and "notify.url" in error["msg"]
    assert f"127.0.0.1:{receiver.port + 1}" in error["msg"]

    r = client.post("/api/v1/sweeps", json={
        "base": notify_body("http://10.0.0.1/hook"), "grid": {"training.seed": [0, 1]},
    })
    assert r.status_code == 422 and "GROKLAB_NOTIFY_ALLOWED_HOSTS" in r.text
    assert receiver.requests == []


def test_notify_without_a_webhook_secret_is_refused_at_submit(client, receiver):
    r = client.post(API, json=notify_body(receiver.url))
    assert r.status_code == 422
    assert "groklab webhook-secret set --owner alice" in r.json()["detail"][0]["msg"]


def test_the_worker_checks_the_host_again_and_never_calls_a_disallowed_one(
    client, api_settings, receiver, secret
):
    """The API allowed the host when the job was submitted; the worker's setting no longer does
    (or names another port): the job trains and succeeds, and the receiver is never called."""
    exp_id = client.post(API, json=notify_body(receiver.url)).json()["id"]
    worker_settings = api_settings.model_copy(update={"notify_allowed_hosts": "example.org"})

    assert run_in_process(exp_id, worker_settings) == "succeeded"
    assert receiver.requests == []


def test_a_name_that_resolves_to_an_internal_address_is_refused(receiver):
    """Allowing `localhost` does not let it reach 127.0.0.1: a non-public address must be in
    the list itself. Listing the address does."""
    from worker.alerts import Refused, checked_addresses

    with pytest.raises(Refused, match="not a public address"):
        checked_addresses(f"http://localhost:{receiver.port}/", (f"localhost:{receiver.port}",))
    assert checked_addresses(receiver.url, (f"127.0.0.1:{receiver.port}",)) == ["127.0.0.1"]
    with pytest.raises(Refused, match="GROKLAB_NOTIFY_ALLOWED_HOSTS"):
        checked_addresses("http://169.254.169.254/latest/meta-data", ("example.org",))


def test_a_failed_delivery_is_retried_with_backoff(receiver):
    from worker.alerts import WebhookSender

    receiver.statuses = [500, 503]
    sender = WebhookSender(lambda: (f"127.0.0.1:{receiver.port}",), backoff_s=0.01)
    sender.submit(receiver.url, "whsec_x", {"event": "finished", "experiment_id": "e"})
    sender.close(timeout_s=10)

    assert sender.delivered == 1 and len(receiver.requests) == 1
    assert receiver.statuses == []  # the two failures were answered first


def test_a_receiver_that_never_answers_does_not_hold_the_job(receiver):
    """Bounded: at the job's end the queue is given up after the drain wait."""
    import time

    from worker.alerts import WebhookSender

    receiver.statuses = [500] * 100
    sender = WebhookSender(lambda: (f"127.0.0.1:{receiver.port}",), attempts=100, backoff_s=0.2)
    for event in ("memorized", "grokked", "finished"):
        sender.submit(receiver.url, "whsec_x", {"event": event, "experiment_id": "e"})
    started = time.monotonic()
    sender.close(timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert sender.delivered == 0


def rows(step: int, train: float, val: float, member: int = 0) -> list[dict]:
    return [{"step": step, "member": member, "name": "train_acc", "value": train},
            {"step": step, "member": member, "name": "val_acc", "value": val}]


class Collecting:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def submit(self, url: str, secret: str, payload: dict) -> None:
        self.sent.append(payload)


def test_memorized_grokked_and_ungrokked_fire_when_the_accuracy_crosses_the_threshold():
    from service.contract.spec import NotifySpec
    from worker.alerts import ExperimentAlerts

    sender = Collecting()
    alerts = ExperimentAlerts(NotifySpec(url="http://example.org/"), "exp", "n", "s", sender)
    for step, train, val in [(0, 0.01, 0.01), (50, 1.0, 0.3), (100, 1.0, 0.5), (450, 1.0, 0.995),
                             (500, 1.0, 1.0), (900, 1.0, 0.7), (950, 1.0, 0.5), (1200, 1.0, 0.992),
                             (1300, 1.0, 0.9)]:
        alerts.on_metrics(rows(step, train, val))
    alerts.finish("succeeded", {"phase": "grokking", "generalization_step": 450})

    assert [(p["event"], p["step"]) for p in sender.sent] == [
        ("memorized", 50), ("grokked", 450), ("ungrokked", 900), ("ungrokked", 1300),
        ("finished", 1300),
    ]
    assert sender.sent[-1]["summary"] == {"phase": "grokking", "generalization_step": 450}
    assert len({p["event_id"] for p in sender.sent}) == len(sender.sent)
    assert list(NotifySpec(url="http://example.org/").events) == list(NOTIFY_EVENTS)


def test_a_pack_member_and_a_resumed_run_report_only_their_own_news():
    """In a pack each member's alerts watch its own rows (as member 0); a run resumed after it
    grokked sends neither memorized nor grokked again."""
    from types import SimpleNamespace

    from service.contract.spec import NotifySpec
    from worker.alerts import ExperimentAlerts
    from worker.recorder import JobRecorder

    sender = Collecting()
    notify = NotifySpec(url="http://example.org/", events=["grokked", "ungrokked"])
    second = ExperimentAlerts(notify, "member-1", "m1", "s", sender)
    second.resume(SimpleNamespace(memorization_step=[50, 40], generalization_step=[None, 300],
                                  grok_streak=[0, 2], step=400, n_members=2), rows=[1])
    first = ExperimentAlerts(None, "member-0", "m0", None, sender)
    # The job's recorder routes each engine row to its member's alerts (sessions unused: no flush).
    recorder = JobRecorder(None, [("member-0", 1), ("member-1", 1)], alerts=[first, second],
                           flush_every_s=1e9)
    recorder.on_metrics(rows(450, 1.0, 1.0, member=0) + rows(450, 1.0, 1.0, member=1))
    assert sender.sent == []
    recorder.on_metrics(rows(500, 1.0, 1.0, member=0) + rows(500, 1.0, 0.4, member=1))
    assert [(p["event"], p["experiment_id"], p["member"]) for p in sender.sent] == [
        ("ungrokked", "member-1", 0)
    ]


def test_allowed_hosts_name_a_host_on_any_port_or_on_one():
    allowed = parse_allowed_hosts(" Hooks.Example.com , 127.0.0.1:9000,[::1]:8080,")
    assert allowed == ("hooks.example.com", "127.0.0.1:9000", "[::1]:8080")
    assert host_allowed("hooks.example.com", 443, allowed)
    assert host_allowed("127.0.0.1", 9000, allowed) and not host_allowed("127.0.0.1", 9001, allowed)
    assert host_allowed("::1", 8080, allowed) and not host_allowed("::1", 80, allowed)
    assert not host_allowed("example.com", 443, allowed)
    assert not host_allowed("127.0.0.1", 80, ())


def test_webhook_secret_commands(api_settings, monkeypatch):
    from service.cli import app
    from service.contract.settings import get_settings

    monkeypatch.setenv("GROKLAB_DATA_DIR", str(api_settings.data_dir))
    get_settings.cache_clear()
    cli = CliRunner()
    try:
        first = cli.invoke(app, ["webhook-secret", "set", "--owner", "bob"])
        assert first.exit_code == 0, first.output
        secret = first.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_") and len(secret) > 40

        listed = cli.invoke(app, ["webhook-secret", "list"])
        assert "bob" in listed.stdout and secret not in listed.stdout

        again = cli.invoke(app, ["webhook-secret", "set", "--owner", "bob"])
        assert again.stdout.strip().splitlines()[-1] != secret

        assert cli.invoke(app, ["webhook-secret", "revoke", "--owner", "bob"]).exit_code == 0
        missing = cli.invoke(app, ["webhook-secret", "revoke", "--owner", "bob"])
        assert missing.exit_code == 1 and "no webhook secret" in missing.output
    finally:
        get_settings.cache_clear()
