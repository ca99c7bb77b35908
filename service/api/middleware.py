"""ASGI middleware: the request body size limit."""
from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Answer 413 to a request whose body is larger than max_bytes.

    A declared Content-Length over the limit is refused before anything is stored; a body sent
    without one (chunked) is counted as it streams in and refused as soon as it passes the limit,
    so a client can never make the server buffer more than max_bytes.

    Before answering, the rest of the body is read and thrown away, up to drain_bytes: a client
    that sends its whole body before reading the answer (most do) would otherwise see the
    connection reset under it, instead of the 413. A body beyond drain_bytes is not read: its
    413 says `Connection: close`, and the connection is closed after it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, drain_bytes: int = 0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "Content-Length must be an integer", close=True)
                return
            if length > self.max_bytes:
                drained = length <= self.drain_bytes and await self._drain(receive, 0)
                await _answer(send, 413, self._message(length), close=not drained)
                return

        received = 0
        started = False
        finished = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, finished, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > self.max_bytes:
                    refused = True
                    # FastAPI re-raises an HTTPException from the body read; its exception
                    # middleware answers it. Anything reading the body elsewhere lands below.
                    raise HTTPException(413, self._message(received, at_least=True))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused and not finished and not await self._drain(receive, received):
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            drained = finished or await self._drain(receive, received)
            await _answer(send, 413, exc.detail, close=not drained)

    async def _drain(self, receive: Receive, received: int) -> bool:
        """Read and discard the rest of the body, up to drain_bytes in all. True when it was
        read to its end."""
        while received <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return False  # the client went away
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    def _message(self, size: int, at_least: bool = False) -> str:
        got = f"at least {size}" if at_least else str(size)
        return (
            f"request body too large: at most {self.max_bytes} bytes (GROKLAB_MAX_BODY_BYTES) "
            f"(got {got})"
        )


async def _answer(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The dashboard's scripts and styles are its own files (/ui/...); it calls only this API.
# Inline style attributes stay allowed (the charts set element styles); inline scripts, eval,
# other origins and framing do not.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """On every response: nosniff, no framing (X-Frame-Options, for browsers without CSP's
    frame-ancestors) and no referrer; on the dashboard's page and files also its
    Content-Security-Policy. (FastAPI's /docs loads Swagger UI from a CDN with an inline script,
    so the policy is the dashboard's only.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        dashboard = path == "/" or path.startswith("/ui/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer")]
                if dashboard:
                    extra.append((b"content-security-policy", DASHBOARD_CSP.encode()))
                headers += [(name, value) for name, value in extra if name not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
