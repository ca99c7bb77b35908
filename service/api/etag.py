"""ETag validators: a client that polls sends `If-None-Match` and gets 304 with no body while
nothing changed.

An ETag is a hash of what the response depends on: the body itself (experiment status,
analysis) or, where building the body is the expensive part (metrics), a cheap stand-in read
first (see store.metrics_validator). 304 answers carry the ETag again and nothing else.
"""
from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse


def etag_of(*parts: Any) -> str:
    """A strong ETag (quoted) for bytes, or for any repr-able parts."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\x00")
    return f'"{digest.hexdigest()}"'


def matches(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names this ETag (weak comparison, RFC 9110)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag})


def json_with_etag(request: Request, body: bytes | Any, status_code: int = 200) -> Response:
    """200 with the JSON body and its ETag, or 304 when the client has it already. `body`: the
    encoded JSON, or content for FastAPI's encoder."""
    if not isinstance(body, bytes):
        body = JSONResponse(jsonable_encoder(body)).body
    etag = etag_of(body)
    if matches(request, etag):
        return not_modified(etag)
    return Response(body, status_code=status_code, media_type="application/json",
                    headers={"ETag": etag})
