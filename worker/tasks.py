"""Celery tasks: they take ids, never payloads, and do nothing for a job they cannot claim."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from app.config import get_settings
from app.db import mark_worker_process, reset_engine
from app.jobs.dispatch import recover_jobs
from app.jobs.workers import forget_worker, record_heartbeat
from app.queue import RUN_JOB_TASK
from app.sweeps.search import advance_searches
from worker.celery_app import celery_app
from worker.runner import begin_shutdown, install_shutdown_flag, run_job, worker_identity

log = logging.getLogger(__name__)
_recovery_stop = threading.Event()
# Set only at the very end (worker_shutdown): while a warm shutdown lets jobs reach their next epoch,
# the worker still beats, so their pages do not say that nothing runs them.
_heartbeat_stop = threading.Event()
_heartbeat_thread: threading.Thread | None = None


@celery_app.task(name=RUN_JOB_TASK)
def run_job_task(job_id: str) -> str | None:
    return run_job(job_id)


def _set_torch_threads() -> None:
    import torch

    settings = get_settings()
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.worker_concurrency)
    # Forked children with the parent's intra-op pool can hang; fix the count explicitly.
    torch.set_num_threads(threads)


@worker_init.connect
def _init_worker(**_: object) -> None:
    """The main process, before the pool forks (it runs the jobs itself with --pool=solo)."""
    mark_worker_process()  # its database sessions (and its children's) get the worker's limits
    install_shutdown_flag()  # shared memory: the pool processes inherit it
    _set_torch_threads()


@worker_shutting_down.connect
def _hand_jobs_back(**_: object) -> None:
    """Warm shutdown: running jobs stop at their next epoch and go back to the queue (their attempt
    given back) instead of holding the shutdown until they finish; no new job is started."""
    _recovery_stop.set()  # a dying worker must not send jobs it could still pick up itself
    begin_shutdown()


@worker_process_init.connect
def _init_child(**_: object) -> None:
    """Each pool process: its own DB engine (never inherit one across fork) and a bounded thread count."""
    reset_engine()
    _set_torch_threads()


# This worker's heartbeat identity and queues, set when it is ready (see app.jobs.workers).
_heartbeat: tuple[str, list[str]] | None = None


def _beat() -> None:
    """The heartbeat: which queues this worker serves (what the API's ``waiting_for`` reads)."""
    if _heartbeat is not None:
        try:
            record_heartbeat(*_heartbeat)
        except Exception:
            log.exception("could not record this worker's heartbeat")


def _recover() -> None:
    """Jobs (dead leases, lost messages), then searches: a tpe sweep whose slot freed while no one
    asked (the API or a worker restarted mid-search) gets its next trials."""
    recover_jobs()
    advance_searches()


def _recovery_loop() -> None:
    interval = get_settings().recovery_interval_seconds
    while not _recovery_stop.wait(interval):
        try:
            _recover()
        except Exception:
            log.exception("recovery pass failed; retrying in %.1f s", interval)


def _heartbeat_loop() -> None:
    # Its own thread: a recovery pass that waits on a locked row (up to RNNLAB_DB_LOCK_TIMEOUT_SECONDS
    # per statement) must not make a live worker look gone.
    interval = get_settings().recovery_interval_seconds
    while not _heartbeat_stop.wait(interval):
        _beat()


@worker_ready.connect
def _start_recovery(sender: Any = None, **_: object) -> None:
    """Every worker runs the recovery loop; its conditional UPDATEs make concurrent loops safe."""
    global _heartbeat, _heartbeat_thread
    queues = sorted(celery_app.amqp.queues.consume_from or celery_app.amqp.queues)
    _heartbeat = (f"{getattr(sender, 'hostname', None) or worker_identity()}:{os.getpid()}", queues)
    _beat()
    # Beating before the first recovery pass, which may wait on locks or the broker for a while.
    _heartbeat_thread = threading.Thread(target=_heartbeat_loop, name="rnnlab-heartbeat", daemon=True)
    _heartbeat_thread.start()
    try:
        _recover()
    except Exception:
        log.exception("first recovery pass failed")
    threading.Thread(target=_recovery_loop, name="rnnlab-recovery", daemon=True).start()


@worker_shutdown.connect
def _stop_recovery(**_: object) -> None:
    _recovery_stop.set()
    _heartbeat_stop.set()
    if _heartbeat_thread is not None:
        # A beat in progress would write the row again after forget_worker removed it.
        _heartbeat_thread.join(timeout=5)
    if _heartbeat is not None:
        try:
            forget_worker(_heartbeat[0])
        except Exception:
            log.exception("could not remove this worker's heartbeat")
