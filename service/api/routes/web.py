"""The web dashboard: the single-page app at `/`, its static files under `/ui/`, and `whoami`.

The page itself is open (it holds no data); everything it shows comes from /api/v1 with the
token the user signs in with, sent as a bearer header from the browser.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from service.api.deps import ReadPrincipal
from service.api.responses import UNAUTHORIZED

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter()


class WhoAmI(BaseModel):
    owner: str = Field(description="The token's owner.")
    scope: str = Field(description="read, write or admin (scopes nest: admin ⊇ write ⊇ read).")


@router.get("/api/v1/whoami", response_model=WhoAmI, tags=["tokens"], responses=UNAUTHORIZED)
def whoami(principal: ReadPrincipal) -> WhoAmI:
    """The owner and scope of the calling token (the dashboard shows write actions by it)."""
    return WhoAmI(owner=principal.owner, scope=principal.scope)


@router.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    """The dashboard page; it signs in with a token kept in the browser's sessionStorage."""
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/ui/{path:path}", include_in_schema=False)
def dashboard_file(path: str) -> FileResponse:
    """A static file of the dashboard (its script, styles and the vendored uPlot)."""
    file = (WEB_DIR / path).resolve()
    if not file.is_relative_to(WEB_DIR) or not file.is_file():
        raise HTTPException(status_code=404, detail=f"no dashboard file {path!r}")
    return FileResponse(file, headers={"Cache-Control": "no-cache"})
