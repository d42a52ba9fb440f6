"""``GET /jobs/{id}/model?format=…``: the stored ``.pt`` artifact, or converted by the engine's exporter.

Conversions read a local copy of the ``.pt`` (from the blob cache on an object store)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.config import get_settings
from app.errors import Conflict
from app.jobs.service import load_model_artifact, model_key, model_path
from app.models import Project
from app.storage import KeyNotFound, LocalStorage, get_storage

ModelFormat = Literal["pt", "onnx", "safetensors"]
MEDIA_TYPES: dict[str, str] = {
    "pt": "application/octet-stream",
    "onnx": "application/onnx",
    "safetensors": "application/octet-stream",
}


@lru_cache(maxsize=8)
def _converted(storage_url: str, key: str, model_format: str) -> bytes:
    """Keyed on the storage key: a model's key names immutable content (job and attempt), and the
    blob cache's LRU clock (the copy's mtime) moves on every use."""
    from worker.engine.export import export_model

    return export_model(load_model_artifact(key), model_format)


@dataclass
class StoredModel:
    """The ``.pt`` in an object store, streamed through the API in chunks."""

    chunks: Iterator[bytes]
    size: int


@dataclass
class ModelRedirect:
    """A presigned URL the client downloads the ``.pt`` from (RNNLAB_MODEL_DOWNLOAD=redirect)."""

    url: str


def exported_model(
    session: Session, project: Project, job_id: str, model_format: ModelFormat
) -> bytes | Path | StoredModel | ModelRedirect:
    """``pt``: the stored file (a path on file storage; on an object store a stream, or a redirect to a
    presigned URL when so configured). Other formats: the converted model's bytes (cached per file)."""
    if model_format == "pt":
        return stored_model(session, project, job_id)
    key = model_key(session, project, job_id)
    try:
        return _converted(get_storage().url, key, model_format)
    except KeyNotFound as exc:
        raise Conflict("model_not_ready", f"job '{job_id}' has no stored model") from exc


def stored_model(session: Session, project: Project, job_id: str) -> Path | StoredModel | ModelRedirect:
    storage = get_storage()
    if isinstance(storage, LocalStorage):
        return model_path(session, project, job_id)
    key = model_key(session, project, job_id)
    try:
        size = storage.size(key)  # checked before any byte is sent: errors stay JSON
    except FileNotFoundError as exc:
        raise Conflict("model_not_ready", f"job '{job_id}' has no stored model") from exc
    settings = get_settings()
    if settings.model_download == "redirect":
        url = storage.presigned_url(key, settings.presigned_url_seconds)
        if url is not None:
            return ModelRedirect(url)
    return StoredModel(storage.iter_bytes(key), size)
