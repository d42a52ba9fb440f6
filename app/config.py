"""One home for configuration: every setting comes from an ``RNNLAB_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process settings; read once per process (see :func:`get_settings`)."""

    model_config = SettingsConfigDict(env_prefix="RNNLAB_", extra="ignore")

    home: Path = Field(default=Path(".rnnlab"), description="Directory for the embedded database, broker and files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under home.")
    broker_url: str = Field(default="", description="Celery broker URL; empty means the embedded broker under home.")
    storage_dir: Path | None = Field(default=None, description="Directory of the file storage (file:// default).")
    storage_url: str = Field(
        default="", description="file:///path or s3://bucket/prefix; empty means file storage in storage_dir."
    )
    s3_endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, …); empty means AWS S3.")
    s3_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    s3_timeout_seconds: float = Field(default=300.0, gt=0, description="Longest single request to the store.")
    s3_max_retries: int = Field(default=3, ge=0, le=20)
    s3_retry_timeout_seconds: float = Field(default=15.0, gt=0, description="Give up retrying a request after this.")
    cache_dir: Path | None = Field(default=None, description="Local copies of stored blobs; default home/cache.")
    cache_max_bytes: int = Field(default=10 * 1024**3, ge=0, description="Size bound of the blob cache (LRU).")
    model_download: Literal["stream", "redirect"] = Field(
        default="stream", description="GET /jobs/{id}/model: stream through the API, or redirect to a presigned URL."
    )
    presigned_url_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    auth_enabled: bool = True
    auth_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="How long a valid key is trusted without a lookup (revocation delay)."
    )
    db_pool_size: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Database connections a process keeps open for reuse (as many again may open at peaks).",
    )
    db_lock_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="PostgreSQL: a statement waiting longer than this for a row lock fails (503 database_busy) "
        "instead of waiting on a stuck process; 0 waits forever.",
    )
    db_idle_transaction_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="PostgreSQL: a session left idle inside a transaction this long (a frozen or partitioned "
        "process) is ended by the server, releasing its locks; 0 never.",
    )
    api_workers: int | None = Field(default=None, ge=1, le=64, description="API processes; default from CPUs.")
    shutdown_grace_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="An API process told to stop waits this long for open requests (event streams, uploads), "
        "then closes them.",
    )
    gc_freeze: bool = Field(default=True, description="gc.freeze() after start-up, with higher GC thresholds.")
    access_log: bool = Field(
        default=True, description="One log line per HTTP request (uvicorn's access log); off behind a logging proxy."
    )
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
    storage_retry_seconds: float = Field(
        default=10.0, ge=0, description="A job whose store was unreachable runs again after attempt x this."
    )
    worker_concurrency: int = Field(default=1, ge=1)
    jobs_per_gpu: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Jobs one GPU worker runs at once (prefork pool processes sharing its GPU): the default "
        "--concurrency of `rnnlab worker --queues gpu`, and of each GPU worker `rnnlab up` starts.",
    )
    torch_threads: int | None = Field(default=None, ge=1)
    broker_visibility_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    embedded_broker_poll_seconds: float = Field(default=0.1, gt=0)
    max_sweep_jobs: int = Field(default=500, ge=1)
    max_training_memory_bytes: int = Field(
        default=32 * 1024**3,
        ge=1,
        description="A job whose estimated training memory (parameters with gradients and Adam state, plus one "
        "batch's activations) is above this is refused at submit (422 model_too_large).",
    )
    sse_poll_seconds: float = Field(default=0.5, gt=0)

    # Bounded cost per request (see "Hardening and limits" in the README).
    max_json_body_bytes: int = Field(default=8 * 1024**2, ge=1024, description="413 above; checked before parsing.")
    body_read_timeout_seconds: float = Field(default=30.0, gt=0, description="408 when no body chunk arrives.")
    max_columns: int = Field(default=2000, ge=1, description="Tables with more columns are refused (422).")
    max_preview_cells: int = Field(default=50_000, ge=1, description="A preview shows at most rows x columns cells.")
    max_decompressed_bytes: int = Field(
        default=1024**3, ge=1, description="Largest decompressed .csv.gz / .npz / decoded .parquet."
    )
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
        if not self.storage_url:
            self.storage_url = self.storage_dir.expanduser().resolve().as_uri()
        elif self.storage_url.startswith("file://"):
            self.storage_dir = Path(urlparse(self.storage_url).path)
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
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
        """The file storage's directory (for ``s3://`` storage: unused; scratch space is home/tmp)."""
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def cache_root(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
