"""Liveness and readiness bodies."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description="Each dependency: 'ok', or what failed.",
        examples=[{"database": "ok", "broker": "ok"}],
    )
