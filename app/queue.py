"""The broker client: the Celery app object, queue and task names, sending job ids, looking inside.

The broker is only a doorbell that carries job ids; SQL holds all state. The Celery app is built on
first use (:func:`get_celery`), not at import, so importing the API creates no broker folders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from app import embedded_broker
from app.config import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"
QUEUES = (DEFAULT_QUEUE, GPU_QUEUE)
RUN_JOB_TASK = "rnnlab.run_job"
# The worker shell's module that registers the tasks; named, not imported (app never imports it).
TASKS_MODULE = "worker.tasks"


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for these settings (embedded filesystem broker or Redis)."""
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return f"{embedded_broker.SCHEME}://", {
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
    app = Celery("rnnlab", broker=url, include=[TASKS_MODULE])
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
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        # Workers talk to each other through SQL, not broadcasts; this also keeps the
        # embedded broker free of control traffic.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


_celery: tuple[Settings, Celery] | None = None


def get_celery() -> Celery:
    """This process's Celery app, built from the current Settings on first use (and again if they change)."""
    global _celery
    settings = get_settings()
    if _celery is None or _celery[0] is not settings:
        _celery = (settings, make_celery(settings))
    return _celery[1]


def send_job(job_id: str, queue: str) -> None:
    """Publish one job id. The task id is the job id, so the broker can be asked whether it holds it."""
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=queue, task_id=job_id)


def broker_ready() -> str | None:
    """None when the broker answers, else the reason."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:
        return f"broker unreachable: {type(exc).__name__}"


def _task_id(payload: Any) -> str | None:
    try:
        return str(payload["headers"]["id"])
    except (KeyError, TypeError):
        return None


def broker_job_ids() -> set[str] | None:
    """Job ids waiting in the broker's queues; None when it cannot tell.

    Delivered-but-unacked messages do not count: the one a killed worker held would only come back
    after the visibility timeout. A queued job whose message a live worker has just received may be
    sent twice; the exclusive claim makes the second delivery a no-op.
    """
    settings = get_settings()
    try:
        if settings.embedded_broker:
            ids: set[str] = set()
            for path in Path(settings.broker_dir / "queue").glob("*.msg"):
                try:
                    task_id = _task_id(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue  # being consumed right now
                if task_id:
                    ids.add(task_id)
            return ids
        if settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
            ids = set()
            for queue in QUEUES:
                for key in client.scan_iter(match=f"{queue}*", count=100):
                    if client.type(key) != b"list":
                        continue
                    for raw in client.lrange(key, 0, -1):
                        task_id = _task_id(json.loads(raw))
                        if task_id:
                            ids.add(task_id)
            client.close()
            return ids
    except Exception as exc:
        log.warning("could not inspect the broker: %s", exc)
    return None
