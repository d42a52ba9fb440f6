"""``GET /jobs/{id}/model?format=…``: the stored ``.pt`` artifact, or converted by the engine's exporter."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.errors import not_found
from app.jobs.service import model_path
from app.models import Project

ModelFormat = Literal["pt", "onnx", "safetensors"]
MEDIA_TYPES: dict[str, str] = {
    "pt": "application/octet-stream",
    "onnx": "application/onnx",
    "safetensors": "application/octet-stream",
}


@lru_cache(maxsize=8)
def _converted(path: str, mtime: float, model_format: str) -> bytes:
    import torch

    from worker.engine.export import export_model

    artifact = torch.load(path, map_location="cpu", weights_only=True)
    return export_model(artifact, model_format)


def exported_model(session: Session, project: Project, job_id: str, model_format: ModelFormat) -> bytes | Path:
    """The stored file's path for ``pt``; the converted model's bytes otherwise (cached per file)."""
    path = model_path(session, project, job_id)
    if model_format == "pt":
        return path
    try:
        return _converted(str(path), path.stat().st_mtime, model_format)
    except FileNotFoundError as exc:  # deleted since the check
        raise not_found("job", job_id) from exc
