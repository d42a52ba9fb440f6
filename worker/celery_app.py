"""The Celery app, configured from Settings. The broker only carries job ids; SQL holds all state."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app.config import Settings, get_settings

DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for these settings (embedded filesystem broker or Redis)."""
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.embedded_broker_poll_seconds,
        }
    options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Unacked messages come back after this; it must outlast the longest job. Jobs lost in
        # between are recovered from SQL by the recovery loop, not by the broker.
        options["visibility_timeout"] = settings.broker_visibility_timeout_seconds
    return settings.broker_url, options


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    url, options = broker_options(settings)
    app = Celery("rnnlab", broker=url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        task_default_queue=DEFAULT_QUEUE,
        # Each queue its own exchange and routing key: with a shared default exchange both queues
        # would be bound to the same key and CPU workers would receive GPU jobs.
        task_queues=[
            Queue(DEFAULT_QUEUE, Exchange(DEFAULT_QUEUE, type="direct"), routing_key=DEFAULT_QUEUE),
            Queue(GPU_QUEUE, Exchange(GPU_QUEUE, type="direct"), routing_key=GPU_QUEUE),
        ],
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        # Workers talk to each other through SQL, not broadcasts; this also keeps the
        # embedded broker free of control traffic.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


celery_app = make_celery()
