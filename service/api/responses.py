"""Response documentation shared by the routers (what OpenAPI lists besides the 200)."""
from __future__ import annotations

from typing import Any

from service.schemas.errors import ErrorOut

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorOut,
        "description": "No experiment with this id that this token may see (its owner's own; "
        "every experiment for an admin token).",
    }
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, unknown or revoked bearer token."}
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "The token's scope is read; this needs write."}
}
QUOTA: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Over the owner's quota of queued + running jobs "
          "(each sweep member counts) or of submissions per minute; the detail names it; see "
          "Retry-After."},
    507: {"model": ErrorOut, "description": "The owner's checkpoints fill its storage quota "
          "(GROKLAB_STORAGE_QUOTA_BYTES)."},
}
RESUME_QUOTA: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Resuming would put the owner over its quota of "
          "queued + running jobs (a paused job is not counted; each sweep member counts); the "
          "detail names it; see Retry-After."},
}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Too many open streams of this token or of this "
          "API process; the detail names the limit; see Retry-After."},
}
