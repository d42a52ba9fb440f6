"""The web dashboard: one static page that talks to the same REST API with the user's key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import NotFound

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)

# An allow-list, not a directory listing: only these files are served, whatever the path says.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
    "vendor/echarts/echarts.min.js": "text/javascript",
    "vendor/echarts/LICENSE": "text/plain",
    "vendor/echarts/NOTICE": "text/plain",
    "vendor/echarts/LICENSE-d3": "text/plain",
    "vendor/echarts/VERSION": "text/plain",
}


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/dashboard/{name:path}")
def dashboard_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound("not_found", f"no dashboard file {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name])
