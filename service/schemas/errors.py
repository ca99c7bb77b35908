"""Error bodies, and the 422 a check made after FastAPI's own validation answers with."""
from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel


class ErrorOut(BaseModel):
    detail: str


class ValidationErrorOut(BaseModel):
    """FastAPI's 422, and the checks made after it (invalid): a list of {loc, msg, type, input}."""

    detail: list[dict[str, Any]]


# A route whose own 422 has a sentence while its parameters' 422 is FastAPI's list.
ErrorOrValidation = ErrorOut | ValidationErrorOut


def invalid(loc: tuple[str, ...], msg: str, value: Any) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (detail: [{loc, msg, type, input}])."""
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": list(loc), "msg": msg, "input": value}],
    )
