"""ASGI middleware: the request body size limit."""
from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Answer 413 to a request whose body is larger than max_bytes.

    A declared Content-Length over the limit is refused before anything is read; a body sent
    without one (chunked) is counted as it streams in and refused as soon as it passes the limit,
    so a client can never make the server buffer more than max_bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "Content-Length must be an integer")
                return
            if length > self.max_bytes:
                await _answer(send, 413, self._message(length))
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from the body read; its exception
                    # middleware answers it. Anything reading the body elsewhere lands below.
                    raise HTTPException(413, self._message(received, at_least=True))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await _answer(send, 413, exc.detail)

    def _message(self, size: int, at_least: bool = False) -> str:
        got = f"at least {size}" if at_least else str(size)
        return (
            f"request body too large: at most {self.max_bytes} bytes (GROKLAB_MAX_BODY_BYTES) "
            f"(got {got})"
        )


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
