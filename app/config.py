"""One home for configuration: every setting comes from an ``RNNLAB_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process settings; read once per process (see :func:`get_settings`)."""

    model_config = SettingsConfigDict(env_prefix="RNNLAB_", extra="ignore")

    home: Path = Field(default=Path(".rnnlab"), description="Directory for the embedded database, broker and files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under home.")
    broker_url: str = Field(default="", description="Celery broker URL; empty means the embedded broker under home.")
    storage_dir: Path | None = Field(default=None, description="Where datasets and models are stored.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    auth_enabled: bool = True
    auth_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="How long a valid key is trusted without a lookup (revocation delay)."
    )
    api_workers: int | None = Field(default=None, ge=1, le=64, description="API processes; default from CPUs.")
    gc_freeze: bool = Field(default=True, description="gc.freeze() after start-up, with higher GC thresholds.")
    max_upload_bytes: int = Field(default=1024**3, ge=1)
    upload_chunk_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Job execution and recovery.
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float | None = Field(default=None, description="Defaults to a third of lease_seconds.")
    recovery_interval_seconds: float = Field(default=5.0, gt=0)
    redispatch_after_seconds: float = Field(default=30.0, gt=0)
    dispatch_in_flight: int = Field(
        default=1, ge=1, le=1_000_000, description="Jobs per queue sent to the broker and not yet started."
    )
    max_attempts: int = Field(default=3, ge=1, le=100)
    worker_concurrency: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    broker_visibility_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    embedded_broker_poll_seconds: float = Field(default=0.1, gt=0)
    max_sweep_jobs: int = Field(default=500, ge=1)
    sse_poll_seconds: float = Field(default=0.5, gt=0)

    # Bounded cost per request (see "Hardening and limits" in the README).
    max_json_body_bytes: int = Field(default=8 * 1024**2, ge=1024, description="413 above; checked before parsing.")
    body_read_timeout_seconds: float = Field(default=30.0, gt=0, description="408 when no body chunk arrives.")
    max_columns: int = Field(default=2000, ge=1, description="Tables with more columns are refused (422).")
    max_preview_cells: int = Field(default=50_000, ge=1, description="A preview shows at most rows x columns cells.")
    max_decompressed_bytes: int = Field(default=1024**3, ge=1, description="Largest decompressed .csv.gz / .npz.")
    max_compression_ratio: float = Field(default=100.0, gt=1, description="Decompressed/compressed size limit.")
    compression_ratio_floor_bytes: int = Field(
        default=64 * 1024**2, ge=0, description="Output this small is never refused for its ratio alone."
    )

    # Limits between clients and projects.
    rate_limit: str = Field(default="100/second", description="Per API key, `limits` notation; empty: no limit.")
    quota_active_jobs: int = Field(default=1000, ge=1, description="Queued + running jobs per project.")
    quota_stored_bytes: int = Field(default=100 * 1024**3, ge=1, description="Uploaded bytes per project.")
    max_event_streams_per_key: int = Field(default=20, ge=1, description="Open /events streams per key and process.")
    metrics_access: Literal["off", "token", "open"] = Field(
        default="off", description="Prometheus /metrics: off (404), token (Bearer RNNLAB_METRICS_TOKEN) or open."
    )
    metrics_token: str = Field(default="", description="The bearer token /metrics takes when metrics_access=token.")

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if self.storage_dir is None:
            self.storage_dir = self.home / "storage"
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'rnnlab.db'}"
        if self.heartbeat_seconds is None:
            self.heartbeat_seconds = max(self.lease_seconds / 3, 0.2)
        return self

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def storage_root(self) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
