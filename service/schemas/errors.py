"""Error bodies, and the 422 a check made after FastAPI's own validation answers with."""
from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel


class ErrorOut(BaseModel):
    detail: str


def invalid(loc: tuple[str, ...], msg: str, value: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (detail: [{loc, msg, type, input}])."""
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": list(loc), "msg": msg, "input": value}],
    )
