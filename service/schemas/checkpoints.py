"""Checkpoint listings."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.contract.models import Checkpoint


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex digest of the stored bytes.")
    created_at: datetime
    meta: dict[str, Any]

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointOut:
        return cls.model_validate(checkpoint)
