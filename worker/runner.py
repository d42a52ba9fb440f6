"""The thin shell around the engine: claim → load → train and evaluate → persist.

Everything here talks to SQL and storage; the engine itself knows nothing of either.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.loading import load_dataset_data
from app.db import new_session
from app.errors import AppError
from app.jobs import state
from app.jobs.dispatch import fairer_job, fill_queue
from app.jobs.final_values import record_final_values
from app.jobs.status import JobStatus
from app.jobs.watch import publish_job_change
from app.models import Dataset, EpochMetric, Evaluation, Job
from app.storage import Storage, StorageUnavailable, get_storage
from app.sweeps import search
from worker.engine import (
    DataError,
    DeviceUnavailable,
    EngineResult,
    EpochReport,
    JobSpec,
    TrainingDiverged,
    resolve_device,
    train_and_evaluate,
)
from worker.engine.results import Timings

log = logging.getLogger(__name__)
T = TypeVar("T")
# Epoch metric rows per INSERT statement (5 parameters each; PostgreSQL takes at most 65,535).
EPOCH_ROWS_PER_INSERT = 2_000


# Set when this worker begins a warm shutdown. It lives in shared memory created before the pool
# forks (see worker.tasks), so the pool processes that run jobs see the main process set it.
_shutdown_flag: Any = None


def install_shutdown_flag() -> None:
    global _shutdown_flag
    _shutdown_flag = multiprocessing.Value("b", 0, lock=False)


def begin_shutdown() -> None:
    if _shutdown_flag is not None:
        _shutdown_flag.value = 1


def shutting_down() -> bool:
    return bool(_shutdown_flag is not None and _shutdown_flag.value)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobFailure(Exception):
    """A failure with a type and a message a user can act on (stored on the job, no stack trace)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def classify_error(exc: BaseException) -> JobFailure:
    """Map an exception from loading or training to (error.type, message)."""
    if isinstance(exc, JobFailure):
        return exc
    if isinstance(exc, AppError):  # e.g. the dataset's stored file is missing
        return JobFailure("data_error", exc.message)
    if isinstance(exc, DataError):
        return JobFailure("data_error", str(exc))
    if isinstance(exc, TrainingDiverged):
        return JobFailure("diverged", str(exc))
    if isinstance(exc, DeviceUnavailable):
        return JobFailure("device_unavailable", str(exc))
    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return JobFailure(
            "out_of_memory",
            "ran out of memory while training; lower training.batch_size, model.hidden_size, model.ensemble "
            "or data.lookback",
        )
    return JobFailure("internal_error", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500])


class Heartbeat(threading.Thread):
    """Keeps the lease alive between epochs and notices a cancel request or a lost claim."""

    def __init__(self, claim: state.Claim, lease_seconds: float, interval_seconds: float) -> None:
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds
        self.cancel_requested = False
        self.lost = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_seconds):
            try:
                with new_session() as session:
                    result = state.renew_lease(session, self.claim, self.lease_seconds)
            except Exception as exc:  # a database hiccup: try again next beat
                log.warning("heartbeat for job %s failed: %s", self.claim.job_id, exc)
                continue
            if not self.apply(result):
                return

    def apply(self, cancel_requested: bool | None) -> bool:
        """Take in what a lease renewal said; False once the claim is lost."""
        if cancel_requested is None:
            self.lost = True
            return False
        self.cancel_requested = self.cancel_requested or cancel_requested
        return True

    @property
    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or shutting_down()

    def stop(self) -> None:
        self._stop_event.set()


def _metric_rows(
    job_id: str, values: Mapping[Any, Mapping[str, Any]], epoch: int | None = None
) -> list[dict[str, Any]]:
    rows = []
    for split, metrics in values.items():
        for name, value in metrics.items():
            if value is None or isinstance(value, int | float):
                row = {"job_id": job_id, "split": split, "name": name, "value": value}
                if epoch is not None:
                    row["epoch"] = epoch
                rows.append(row)
    return rows


def run_job(job_id: str, worker_id: str | None = None) -> str | None:
    """Run one job if it can be claimed; returns its final status (None when not claimed)."""
    settings = get_settings()
    worker_id = worker_id or worker_identity()
    if shutting_down():
        # Leave it queued: the broker message is acknowledged, and recovery sends the job again to a
        # live worker (or to this one once it is back).
        log.info("job %s: not starting it, this worker is shutting down", job_id)
        return None
    with new_session() as session:
        claim = claim_fairly(session, job_id, worker_id, settings.lease_seconds)
        if claim is not None:
            job_id = claim.job_id  # maybe another project's job (see claim_fairly)
        job = session.get(Job, job_id)
        # A job left the broker (claimed, or a stale message): its place goes to the next job now.
        refill(job.queue if job is not None else None)
        if claim is None:
            log.info("job %s not claimable (already taken, finished or cancelled); skipping", job_id)
            return None
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id)
        spec_dict = dict(job.spec)
        epochs = int(spec_dict["training"]["epochs"])
        sweep_id = job.sweep_id
        is_trial = job.trial_number is not None

    publish_job_change(job_id)  # event streams show it running now
    status = _run_claimed(claim, job, dataset, spec_dict, epochs, is_trial)
    publish_job_change(job_id)
    if sweep_id is not None and status is not None:
        # A slot of the search is free: ask its next trial now (the recovery loop would, later).
        try:
            search.advance_search(sweep_id)
        except Exception:
            log.exception("sweep %s: could not ask the next trial; the recovery loop will", sweep_id)
    return status


def claim_fairly(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> state.Claim | None:
    """Claim the job whose message this is, or the job fairness now puts before it.

    The broker's next message was chosen when its place freed; a job another project submitted
    since (while this one waited in the broker) runs first, and this one waits in SQL again.
    """
    try:
        other = fairer_job(session, job_id)
    except DBAPIError as exc:  # fairness is best effort; the job in hand still runs
        log.warning("job %s: could not look for a fairer job: %s", job_id, exc)
        session.rollback()
        other = None
    if other is not None:
        claim = state.claim_job(session, other, worker_id, lease_seconds)
        if claim is not None:
            state.unreserve(session, [job_id])
            log.info("job %s: running job %s of a project with fewer jobs first", job_id, other)
            return claim
    return state.claim_job(session, job_id, worker_id, lease_seconds)


def refill(queue: str | None) -> None:
    """Send the next fair job of ``queue`` to the broker (never while this worker shuts down)."""
    if queue is None or shutting_down():
        return
    try:
        fill_queue(queue)
    except Exception:
        log.exception("could not dispatch the next job of queue %s; the recovery loop will", queue)


def _run_claimed(
    claim: state.Claim, job: Job, dataset: Dataset | None, spec_dict: dict[str, Any], epochs: int, is_trial: bool
) -> str | None:
    settings = get_settings()
    job_id = claim.job_id
    worker_id = claim.worker_id

    assert settings.heartbeat_seconds is not None  # Settings fills it in from lease_seconds
    heartbeat = Heartbeat(claim, settings.lease_seconds, settings.heartbeat_seconds)
    heartbeat.start()
    unwritten: list[tuple[int, dict[str, dict[str, Any]]]] = []  # epochs the database did not take yet
    log.info("job %s: attempt %d on %s", job_id, claim.attempt, worker_id)
    try:
        if dataset is None:
            raise JobFailure("data_error", f"dataset '{job.dataset_id}' no longer exists")
        spec = JobSpec.model_validate(spec_dict)
        data = load_dataset_data(dataset)
        device = resolve_device(spec.device).type
        try:
            with new_session() as session:
                state.renew_lease(session, claim, settings.lease_seconds, device=device, progress_epochs=epochs)
        except DBAPIError as exc:  # only informational fields; the heartbeat keeps the lease
            log.warning("job %s: could not record its device: %s", job_id, exc)

        pruning = PruneCheck(job_id, enabled=is_trial)

        def on_epoch(report: EpochReport) -> None:
            unwritten.append((report.epoch, report.metrics))
            try:
                heartbeat.apply(record_epochs(claim, unwritten, settings.lease_seconds))
                publish_job_change(job_id)
            except DBAPIError as exc:
                # A database hiccup must not fail the job: the lease covers the gap, and the
                # heartbeat keeps trying. The epoch is kept and written with the next one, or with
                # the results at the end: a job never succeeds with a hole in its history.
                log.warning(
                    "job %s: could not record epoch %d yet (%d epoch(s) kept to write later): %s",
                    job_id,
                    report.epoch,
                    len(unwritten),
                    exc,
                )
                return
            unwritten.clear()
            pruning.after_epoch(report.epoch)

        engine_started = time.perf_counter()
        result = train_and_evaluate(
            spec,
            data,
            on_epoch=on_epoch,
            should_stop=lambda: heartbeat.should_stop or pruning.pruned,
            device=device,
        )
        engine_seconds = time.perf_counter() - engine_started
    except StorageUnavailable as exc:
        # Not the data's fault: the job runs again later, here or on another worker.
        return retry_for_storage(claim, job.max_attempts, exc)
    except Exception as exc:
        failure = classify_error(exc)
        if not isinstance(exc, JobFailure):
            log.exception("job %s failed", job_id)
        try:
            with new_session() as session:
                finish_ok = state.finish_job(
                    session, claim, JobStatus.FAILED, error_type=failure.error_type, error_message=failure.message
                )
        except DBAPIError:
            log.exception("job %s: could not record its failure; the lease will expire and it runs again", job_id)
            return None
        return JobStatus.FAILED if finish_ok else None
    finally:
        heartbeat.stop()

    if heartbeat.lost:
        log.warning("job %s: lease lost to another worker; discarding this attempt", job_id)
        return None
    result.summary.timings = Timings(
        engine_seconds=round(engine_seconds, 4),
        train_seconds=round(result.train_seconds, 4),
        evaluation_seconds=round(result.evaluation_seconds, 4),
    )
    try:
        return conclude(
            claim, result, cancel_requested=heartbeat.cancel_requested, pruned=pruning.pruned, unwritten=unwritten
        )
    except DBAPIError:
        # Nothing was committed; the lease expires and another attempt runs the job again.
        log.exception("job %s: could not record how it ended; the lease will expire and it runs again", job_id)
        return None


def conclude(
    claim: state.Claim,
    result: EngineResult,
    *,
    cancel_requested: bool,
    pruned: bool = False,
    unwritten: Sequence[tuple[int, dict[str, dict[str, Any]]]] = (),
) -> str | None:
    """Record how a finished engine run ends: handed back, cancelled, pruned, or its results saved.

    ``unwritten`` are epochs whose metrics the database did not take during training; they are
    written in the same transaction as the final status, so both land or neither does.
    """
    if result.cancelled and shutting_down() and not cancel_requested:
        return release(claim)
    if result.cancelled and pruned and not cancel_requested:
        # Its per-epoch curve is stored (with any epoch kept back); the summary says where it stopped.
        ok = _finish_with_epochs(
            claim,
            JobStatus.PRUNED,
            unwritten,
            summary=result.summary.model_dump(mode="json"),
            progress_epoch=result.epochs_run,
            train_seconds=result.train_seconds,
            device=result.device,
        )
        return JobStatus.PRUNED if ok else None
    if result.cancelled:
        _finish_with_epochs(claim, JobStatus.CANCELLED, unwritten, summary=result.summary.model_dump(mode="json"))
        return JobStatus.CANCELLED
    try:
        return persist_result(claim, result, unwritten)
    except DBAPIError:
        raise
    except Exception as exc:  # the model could not be stored (disk full, storage unreachable)
        log.exception("job %s: could not store its results", claim.job_id)
        with new_session() as session:
            ok = state.finish_job(
                session,
                claim,
                JobStatus.FAILED,
                error_type="storage_error",
                error_message=f"the trained model could not be stored ({type(exc).__name__}: {exc}); "
                "check the storage (RNNLAB_STORAGE_URL: free space and permissions of RNNLAB_STORAGE_DIR, or the "
                "object store's reachability and credentials), then submit the job again",
            )
        return JobStatus.FAILED if ok else None


def retry_for_storage(claim: state.Claim, max_attempts: int, exc: StorageUnavailable) -> str | None:
    """The store could not be reached while loading the job's data: queue the job again after a pause
    (longer with each attempt); once its attempts are used up, fail it as ``storage_unavailable``."""
    settings = get_settings()
    try:
        with new_session() as session:
            if claim.attempt >= max_attempts:
                log.warning("job %s: storage unreachable on its last attempt: %s", claim.job_id, exc.message)
                ok = state.finish_job(
                    session,
                    claim,
                    JobStatus.FAILED,
                    error_type="storage_unavailable",
                    error_message=f"{exc.message} (on each of {claim.attempt} attempts, RNNLAB_MAX_ATTEMPTS)",
                )
                return JobStatus.FAILED if ok else None
            delay = settings.storage_retry_seconds * claim.attempt
            ok = state.retry_later(session, claim, delay)
    except DBAPIError:
        log.exception("job %s: could not queue it again; the lease will expire and it runs again", claim.job_id)
        return None
    log.warning("job %s: storage unreachable (%s); queued again, to run in %.0f s", claim.job_id, exc.message, delay)
    return JobStatus.QUEUED if ok else None


class PruneCheck:
    """Asks the search's pruner after each recorded epoch of a trial; once it says stop, it stays stopped."""

    def __init__(self, job_id: str, *, enabled: bool) -> None:
        self.job_id = job_id
        self.enabled = enabled
        self.pruned = False

    def after_epoch(self, epoch: int) -> None:
        if not self.enabled or self.pruned:
            return
        try:
            self.pruned = search.should_prune(self.job_id)
        except Exception:  # a failed decision must not fail the trial: it simply trains on
            log.exception("job %s: pruning decision after epoch %d failed", self.job_id, epoch)
            return
        if self.pruned:
            log.info("job %s: pruned after epoch %d", self.job_id, epoch)


def _finish_with_epochs(
    claim: state.Claim, status: JobStatus, unwritten: Sequence[tuple[int, dict[str, dict[str, Any]]]], **values: Any
) -> bool:
    """The epochs kept back, then the job's final row — last, as in ``record_epochs`` — in one
    transaction, only while the claim holds."""
    finished = _epochs_then_job(
        claim.job_id,
        unwritten,
        lambda session: state.finish_job(session, claim, status, commit=False, **values) or None,
    )
    return finished is not None


def release(claim: state.Claim) -> str | None:
    """Hand the job back to the queue: its worker is shutting down.

    It is not sent to the broker from here (this worker's consumer may still be taking
    messages); the recovery loop of a live worker, or of this one when it starts again, sends it.
    """
    with new_session() as session:
        if not state.release_job(session, claim):
            return None
    log.info("job %s: handed back to the queue at shutdown; it will run again from the start", claim.job_id)
    return JobStatus.QUEUED


def record_epoch(
    claim: state.Claim, epoch: int, metrics: dict[str, dict[str, Any]], lease_seconds: float
) -> bool | None:
    """Renew the lease and store one epoch's metrics in one transaction, only while the claim holds.

    Returns cancel_requested, or None when the claim is lost: then nothing is written, so a stale
    attempt can never mix its metrics into the attempt that replaced it.
    """
    return record_epochs(claim, [(epoch, metrics)], lease_seconds)


def record_epochs(
    claim: state.Claim, epochs: Sequence[tuple[int, dict[str, dict[str, Any]]]], lease_seconds: float
) -> bool | None:
    """:func:`record_epoch` for the epochs kept since the last write that worked (and the current one).

    The job's row is written last, just before the commit: a worker that freezes (a paused VM) while
    it sends the epochs holds no lock on the job, and one that freezes after the update is idle in its
    transaction, which the server ends (RNNLAB_DB_IDLE_TRANSACTION_SECONDS). Frozen in the middle of a
    statement the server waits for, it would hold the job's row for as long as it stays frozen.
    """
    last = max(epoch for epoch, _ in epochs)
    return _epochs_then_job(
        claim.job_id,
        epochs,
        lambda session: state.renew_lease(session, claim, lease_seconds, commit=False, progress_epoch=last),
        replace=len(epochs) > 1,
    )


def _epochs_then_job(
    job_id: str,
    epochs: Sequence[tuple[int, dict[str, dict[str, Any]]]],
    write_job: Callable[[Session], T | None],
    replace: bool = True,
) -> T | None:
    """In one transaction: the epochs, then ``write_job`` (the job's row, guarded by the claim; None
    when the claim is lost), then the commit — or nothing at all when the claim is lost or the
    attempt that replaced this one stored these epochs already (their keys collide)."""
    with new_session() as session:
        try:
            _write_epochs(session, job_id, epochs, replace=replace)
        except IntegrityError:
            session.rollback()
            return None
        result = write_job(session)
        if result is None:
            session.rollback()
            return None
        session.commit()
    return result


def _write_epochs(
    session: Session, job_id: str, epochs: Sequence[tuple[int, dict[str, dict[str, Any]]]], replace: bool = True
) -> None:
    """Insert the epochs' metric rows. Kept epochs replace rows of the same epochs, because a commit
    whose answer was lost with the connection may have stored them already."""
    if not epochs:
        return
    numbers = [epoch for epoch, _ in epochs]
    if replace:
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch.in_(numbers)))
    rows = [row for epoch, metrics in epochs for row in _metric_rows(job_id, metrics, epoch)]
    # One multi-row INSERT per chunk (not an executemany, which psycopg pipelines as many messages): a
    # statement the server has whole, so a sender that freezes leaves it waiting between statements.
    for start in range(0, len(rows), EPOCH_ROWS_PER_INSERT):
        session.execute(insert(EpochMetric).values(rows[start : start + EPOCH_ROWS_PER_INSERT]))


def persist_result(
    claim: state.Claim, result: EngineResult, unwritten: Sequence[tuple[int, dict[str, dict[str, Any]]]] = ()
) -> str | None:
    """Write artifact, evaluation, final metrics and status; all of it only while the claim holds.

    The artifact goes to a key of its own attempt, so a stale attempt can never overwrite the
    model of the attempt that succeeded.
    """
    import torch

    storage = get_storage()
    key = f"models/{claim.job_id}-{claim.attempt}.pt"
    buffer = io.BytesIO()
    torch.save(result.artifact, buffer)
    tmp = storage.temp_path(".pt")
    try:
        tmp.write_bytes(buffer.getvalue())
        storage.put_file(tmp, key)
    finally:
        tmp.unlink(missing_ok=True)

    assert result.evaluation is not None  # only a cancelled run has none
    evaluation = result.evaluation.model_dump(mode="json")
    with new_session() as session:
        try:
            # The results first and the job's row last, as in record_epochs: a worker frozen while it
            # sends them holds no lock on the job. Discarded with the rollback if the claim is lost.
            try:
                _write_epochs(session, claim.job_id, unwritten)  # before the best/last values read them
                record_final_values(session, claim.job_id, evaluation["metrics"], result.summary.best_epoch)
                session.add(Evaluation(job_id=claim.job_id, body=evaluation))
                session.flush()
            except IntegrityError:  # the attempt that replaced this one stored its results already
                ok = False
            else:
                ok = state.finish_job(
                    session,
                    claim,
                    JobStatus.SUCCEEDED,
                    commit=False,
                    summary=result.summary.model_dump(mode="json"),
                    artifact_key=key,
                    train_seconds=result.train_seconds,
                    progress_epoch=result.epochs_run,
                    device=result.device,
                )
            if not ok:
                session.rollback()
                storage.delete(key)
                log.warning("job %s: claim lost before results were saved; discarding this attempt", claim.job_id)
                return None
            session.commit()
        except BaseException:
            storage.delete(key)  # nothing points at it
            raise
    _delete_earlier_models(storage, claim)
    return JobStatus.SUCCEEDED


def _delete_earlier_models(storage: Storage, claim: state.Claim) -> None:
    """Best effort: models earlier attempts of the job uploaded and never committed (a worker killed
    between its upload and its commit). A key with no object is fine; what stays is removed when the
    job is deleted."""
    for attempt in range(1, claim.attempt):
        key = f"models/{claim.job_id}-{attempt}.pt"
        try:
            storage.delete(key)
        except Exception as exc:
            log.warning("job %s: could not remove %s of an earlier attempt: %s", claim.job_id, key, exc)
