"""Alerts: watch an experiment's metric rows and POST the events its spec's notify asks for.

Events (service/contract/notify.py: NOTIFY_EVENTS), per ensemble member (member 0 for a single
run and for each member of a pack, which is its own experiment):
    memorized   the first evaluation with train_acc >= ACC_THRESHOLD
    grokked     the first evaluation with val_acc >= ACC_THRESHOLD
    ungrokked   an evaluation with val_acc below it again, after grokking (again after each
                time it generalised anew)
    finished    the job ended succeeded or cancelled (status says which), with summary bits
    failed      the job failed, with the error's first line

Delivery never blocks training: events go on a queue that one background thread (per job)
drains, POSTing each body signed with the owner's webhook secret (X-Groklab-Signature), retried
with exponential backoff (tenacity, bounded) on connection errors, 429 and 5xx. At the job's end
the queue is drained for at most DRAIN_S seconds. Delivery is at least once: a job resumed from
a checkpoint may send an event again for a step it had already passed; event_id (experiment,
event, member, step) tells a receiver it has seen it.

Before each send the worker checks the URL against its own GROKLAB_NOTIFY_ALLOWED_HOSTS (the
setting may have changed since submission), resolves the host, refuses it when any address is
not public (loopback, private, link-local, ...) unless that address is itself in the list, and
connects to the address it checked (no second lookup, so DNS cannot switch it; no redirects).
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from sqlalchemy.orm import Session

from service import store
from service.contract.models import Experiment
from service.contract.notify import (
    SIGNATURE_HEADER,
    host_allowed,
    parse_allowed_hosts,
    signature,
    url_host_port,
    url_refusal,
)
from service.contract.spec import ExperimentSpec, NotifySpec
from service.science.grokking import ACC_THRESHOLD, TRAIN_ACC, VAL_ACC

if TYPE_CHECKING:
    from worker.engine.train import Trainer

log = logging.getLogger(__name__)

ATTEMPTS = 5  # per event
BACKOFF_S = 0.5  # first wait between attempts; doubles, at most BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
TIMEOUT_S = 5.0  # connect and read, per attempt
DRAIN_S = 15.0  # at the job's end, the longest wait for the queue to empty
MAX_QUEUED = 1000  # events waiting; beyond, new ones are dropped (and logged)


class Refused(Exception):
    """The destination is not allowed: never retried."""


class _Retryable(Exception):
    """A failure worth another attempt: connection error, timeout, 429 or 5xx."""


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address` (already checked), with Host still the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `address` (already checked), verifying the certificate of the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def checked_addresses(url: str, allowed: tuple[str, ...]) -> list[str]:
    """The addresses url's host resolves to, when it may be called; Refused otherwise."""
    refusal = url_refusal(url, allowed)
    if refusal is not None:
        raise Refused(refusal)
    host, port = url_host_port(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Retryable(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        if not ipaddress.ip_address(address).is_global and not host_allowed(address, port, allowed):
            raise Refused(
                f"{host} resolves to {address}, which is not a public address and is not itself "
                "in GROKLAB_NOTIFY_ALLOWED_HOSTS"
            )
    return addresses


def post_once(url: str, body: bytes, headers: dict[str, str], allowed: tuple[str, ...],
              timeout_s: float = TIMEOUT_S) -> int:
    """One POST of body to url, after checking it; the status. Refused or _Retryable."""
    addresses = checked_addresses(url, allowed)
    host, port = url_host_port(url)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_type = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_type(host, port, addresses[0], timeout_s)
    try:
        connection.request("POST", target, body=body, headers=headers)
        status = connection.getresponse().status
    except OSError as exc:  # refused, reset, timed out, TLS
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status}")
    return status


class WebhookSender:
    """One job's deliveries: a queue and a background thread that POSTs each event in turn.

    allowed_hosts() is read before every send (the worker's own setting, not the API's)."""

    def __init__(
        self, allowed_hosts: Callable[[], tuple[str, ...]], *, attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S, timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.allowed_hosts = allowed_hosts
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.undelivered = 0

    @classmethod
    def for_settings(cls, settings: Any) -> "WebhookSender":
        return cls(lambda: parse_allowed_hosts(settings.notify_allowed_hosts))

    def submit(self, url: str, secret: str, payload: dict[str, Any]) -> None:
        """Queue one event; never waits (a full queue drops it, with a log line)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="webhooks", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((url, secret, payload))
        except queue.Full:
            self.undelivered += 1
            log.warning("alert queue full; dropped %s of %s", payload["event"], payload["experiment_id"])

    def close(self, timeout_s: float = DRAIN_S) -> None:
        """Send what is queued, waiting at most timeout_s; then give up on the rest."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
            self._thread.join(timeout_s)
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._abandon.set()
            log.warning("alerts not delivered within %.0f s of the job's end; given up", timeout_s)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._abandon.is_set():
                self.undelivered += 1
                continue
            self._deliver(*item)

    def _deliver(self, url: str, secret: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "groklab-alerts"}
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_when_event_set(self._abandon),
            wait=wait_exponential(multiplier=self.backoff_s, max=BACKOFF_MAX_S),
            retry=retry_if_exception_type(_Retryable),
            sleep=self._abandon.wait,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    # signed at each try: a retry minutes later is still within tolerance
                    signed = {**headers, SIGNATURE_HEADER: signature(secret, body)}
                    status = post_once(url, body, signed, self.allowed_hosts(), self.timeout_s)
        except (Refused, _Retryable, ValueError) as exc:
            self.undelivered += 1
            log.warning("alert %s of %s not delivered to %s: %s",
                        payload["event"], payload["experiment_id"], url, exc)
            return
        if status >= 400:
            self.undelivered += 1
            log.warning("alert %s of %s refused by %s: HTTP %d",
                        payload["event"], payload["experiment_id"], url, status)
        else:
            self.delivered += 1


class ExperimentAlerts:
    """One experiment's alerts: on_metrics(rows) watches its evaluations, finish() ends it.

    Inert (every method does nothing) when the spec has no notify or the owner no secret."""

    def __init__(self, notify: NotifySpec | None, experiment_id: str, name: str,
                 secret: str | None, sender: WebhookSender) -> None:
        self.notify, self.experiment_id, self.name = notify, experiment_id, name
        self.secret, self.sender = secret, sender
        self.enabled = notify is not None and secret is not None
        if notify is not None and secret is None:
            log.warning("experiment %s asks for alerts but its owner has no webhook secret "
                        "(groklab webhook-secret set); none are sent", experiment_id)
        # per member: memorised yet, grokked yet, val acc at or above the threshold now
        self.memorized: dict[int, bool] = {}
        self.grokked: dict[int, bool] = {}
        self.above: dict[int, bool] = {}
        self.last: dict[int, dict[str, float]] = {}
        self.last_step = 0

    def resume(self, trainer: Trainer, rows: list[int] | None = None) -> None:
        """Take up where a resumed run was: what it had memorised or grokked is not sent again.
        rows: the trainer's ensemble rows that are this experiment's members (default all)."""
        for member, e in enumerate(rows if rows is not None else range(trainer.n_members)):
            self.memorized[member] = trainer.memorization_step[e] is not None
            self.grokked[member] = trainer.generalization_step[e] is not None
            self.above[member] = trainer.grok_streak[e] > 0
        self.last_step = trainer.step

    def on_metrics(self, rows: list[dict]) -> None:
        """Watch this experiment's evaluation rows (member: the row's member of it)."""
        if not self.enabled:
            return
        for row in rows:
            m, step, value = row["member"], row["step"], row["value"]
            if row["name"] not in (TRAIN_ACC, VAL_ACC) or value is None:
                continue
            self.last.setdefault(m, {})[row["name"]] = value
            self.last_step = max(self.last_step, step)
            if row["name"] == TRAIN_ACC and value >= ACC_THRESHOLD and not self.memorized.get(m):
                self.memorized[m] = True
                self._send("memorized", step, m)
            elif row["name"] == VAL_ACC and value >= ACC_THRESHOLD:
                self.above[m] = True
                if not self.grokked.get(m):
                    self.grokked[m] = True
                    self._send("grokked", step, m)
            elif row["name"] == VAL_ACC and self.above.get(m) and self.grokked.get(m):
                self.above[m] = False
                self._send("ungrokked", step, m)

    def finish(self, status: str, summary: dict | None = None, error: str | None = None) -> None:
        """The job ended with status: "finished" (succeeded, cancelled) or "failed"."""
        if not self.enabled:
            return
        summary = summary or {}
        bits = {
            key: summary.get(key) for key in (
                "memorization_step", "generalization_step", "phase", "final_train_acc",
                "final_val_acc", "stopped",
            ) if key in summary
        }
        event = "failed" if status == "failed" else "finished"
        extra: dict[str, Any] = {"summary": bits}
        if error:
            extra["error"] = error.strip().splitlines()[0][:500]
        self._send(event, self.last_step, None, status=status, **extra)

    def _send(self, event: str, step: int, member: int | None, status: str = "running",
              **extra: Any) -> None:
        if event not in self.notify.events:
            return
        payload = {
            "event": event,
            "event_id": f"{self.experiment_id}:{event}:{'' if member is None else member}:{step}",
            "experiment_id": self.experiment_id, "name": self.name, "step": step,
            "status": status, "sent_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if member is not None:
            payload["member"] = member
            payload["metrics"] = self.last.get(member, {})
        self.sender.submit(self.notify.url, self.secret, {**payload, **extra})


def experiment_alerts(
    session: Session, experiment: Experiment, spec: ExperimentSpec, sender: WebhookSender
) -> ExperimentAlerts:
    """The alerts of a claimed experiment row (spec: its spec), with its owner's secret."""
    secret = store.get_webhook_secret(session, experiment.owner) if spec.notify is not None else None
    return ExperimentAlerts(spec.notify, experiment.id, experiment.name, secret, sender)
