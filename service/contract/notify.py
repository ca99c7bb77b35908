"""Alerts: the webhooks a run POSTs to when it memorises, groks, ungroks, finishes or fails.

Pure Python, no torch and no database: the spec checks notify.url against the allowed hosts at
submission (service/contract/spec.py), the worker checks it again and signs and sends
(worker/alerts.py).

The allowed hosts (GROKLAB_NOTIFY_ALLOWED_HOSTS) are a comma-separated list of `host` or
`host:port` entries (IPv6 in brackets: `[::1]:9000`); `host` allows any port, `host:port` that
port only; an empty list denies every host. Each delivery is signed with the owner's webhook
secret over the time of sending and the exact body, as Stripe and GitHub sign theirs:
`X-Groklab-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`. A receiver
checks the HMAC and that t is within a tolerance of its clock (signature_matches: 5 minutes),
so a captured delivery cannot be replayed later.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

NOTIFY_EVENTS: tuple[str, ...] = ("memorized", "grokked", "ungrokked", "finished", "failed")
SIGNATURE_HEADER = "X-Groklab-Signature"
SECRET_PREFIX = "whsec_"
DEFAULT_PORTS = {"http": 80, "https": 443}
SIGNATURE_TOLERANCE_S = 300  # how far a delivery's t may be from the receiver's clock


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """The entries of a GROKLAB_NOTIFY_ALLOWED_HOSTS value, lower-cased, blanks dropped."""
    return tuple(entry.strip().lower() for entry in text.split(",") if entry.strip())


def url_host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"must be an http:// or https:// URL (got {url!r})")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password (the body is signed instead)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"has an invalid port ({exc})") from None
    if not host:
        raise ValueError(f"must name a host (got {url!r})")
    return host.lower(), port or DEFAULT_PORTS[parts.scheme]


def _split_entry(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, None


def host_allowed(host: str, port: int, allowed: tuple[str, ...]) -> bool:
    """Whether host:port is named by an entry of the allowed list."""
    host = host.lower().strip("[]")
    for entry in allowed:
        entry_host, entry_port = _split_entry(entry)
        if entry_host == host and entry_port in (None, port):
            return True
    return False


def url_refusal(url: str, allowed: tuple[str, ...]) -> str | None:
    """Why url may not be called with these allowed hosts, or None when it may."""
    host, port = url_host_port(url)
    if host_allowed(host, port, allowed):
        return None
    listed = ", ".join(allowed) if allowed else "none: the setting is empty, which denies every host"
    return (
        f"host {host}:{port} is not in GROKLAB_NOTIFY_ALLOWED_HOSTS (allowed: {listed}); "
        "ask the operator to add it"
    )


def new_webhook_secret() -> str:
    """A fresh signing secret: whsec_ and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Groklab-Signature header value of a body sent at `timestamp` (unix seconds, default
    now): t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def signature_matches(
    secret: str, body: bytes, header: str | None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None,
) -> bool:
    """A receiver's check of X-Groklab-Signature: the HMAC matches (constant-time) and t is
    within tolerance_s of now (a replayed delivery is refused)."""
    if not header:
        return False
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, t), f"t={t},v1={fields.get('v1', '')}")
