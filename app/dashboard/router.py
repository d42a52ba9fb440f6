"""The web dashboard: one static page that talks to the same REST API with the user's key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import NotFound

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/dashboard/{name}")
def dashboard_asset(name: str) -> FileResponse:
    allowed = {"app.js": "text/javascript", "style.css": "text/css"}
    if name not in allowed:
        raise NotFound("not_found", f"no dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=allowed[name])
