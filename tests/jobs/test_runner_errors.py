"""How training-time failures become error.type + a message a user can act on."""

from __future__ import annotations

import pytest
import torch

from worker.engine import DataError, DeviceUnavailable, TrainingDiverged, resolve_device
from worker.engine.results import Evaluation, GeneralizationGap, Summary
from worker.runner import classify_error


@pytest.mark.parametrize(
    ("exc", "error_type", "says"),
    [
        (DataError("12 missing values in column 'x'", field="data.features"), "data_error", "missing"),
        (TrainingDiverged("loss became NaN at epoch 3; lower the learning rate"), "diverged", "learning rate"),
        (MemoryError(), "out_of_memory", "batch_size"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory", "batch_size"),
        (RuntimeError("something odd\nTraceback (most recent call last):\n  File ..."), "internal_error", "odd"),
    ],
)
def test_failures_are_classified_without_stack_traces(exc: BaseException, error_type: str, says: str) -> None:
    failure = classify_error(exc)
    assert failure.error_type == error_type
    assert says in failure.message and "Traceback" not in failure.message


def test_cuda_without_a_gpu_is_a_clear_failure() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(DeviceUnavailable) as info:
        resolve_device("cuda")
    failure = classify_error(info.value)
    assert failure.error_type == "device_unavailable" and "gpu" in failure.message
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"


# --- stale attempts and database hiccups (the worker shell, run in this process) ----------------

from datetime import timedelta  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from sqlalchemy import delete, func, select, update  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from app.db import new_session  # noqa: E402
from app.jobs import state  # noqa: E402
from app.models import EpochMetric, Job, utcnow  # noqa: E402
from app.storage import get_storage  # noqa: E402
from tests.stack import forecast_spec, sine_csv  # noqa: E402


@pytest.fixture
def job_id(client, auth) -> str:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(200).encode(), "text/csv")})
    return client.post("/api/v1/jobs", headers=auth, json=forecast_spec(r.json()["id"])).json()["id"]


def _replace_attempt(job_id: str) -> tuple[state.Claim, state.Claim]:
    """Worker A claims, its lease expires, worker B claims the retry."""
    with new_session() as session:
        stale = state.claim_job(session, job_id, "A", lease_seconds=60)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        state.expire_leases(session)
        current = state.claim_job(session, job_id, "B", lease_seconds=60)
    assert stale is not None and current is not None
    return stale, current


def test_a_stale_attempt_writes_no_epoch_metrics(job_id) -> None:
    from worker.runner import record_epoch

    stale, current = _replace_attempt(job_id)
    assert record_epoch(stale, 1, {"train": {"loss": 1.0}}, 60) is None
    assert record_epoch(current, 1, {"train": {"loss": 0.5}}, 60) is False
    with new_session() as session:
        rows = session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)).all()
    assert [(r.epoch, r.value) for r in rows] == [(1, 0.5)]


def test_a_stale_attempt_after_the_current_one_wrote_the_epoch_writes_nothing(job_id) -> None:
    from worker.runner import record_epoch

    stale, current = _replace_attempt(job_id)
    assert record_epoch(current, 1, {"train": {"loss": 0.5}}, 60) is False
    assert record_epoch(stale, 1, {"train": {"loss": 1.0}}, 60) is None  # its insert collides: claim lost
    with new_session() as session:
        rows = session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id)).all()
    assert [(r.epoch, r.value) for r in rows] == [(1, 0.5)]


def test_the_job_row_is_written_last_before_the_commit(job_id) -> None:
    # A worker frozen while it sends epoch rows must not hold the job's row lock: the server ends a
    # session idle in its transaction, not one waiting for the rest of a statement.
    from sqlalchemy import event

    from app.db import get_engine
    from worker.runner import record_epochs

    with new_session() as session:
        claim = state.claim_job(session, job_id, "A", lease_seconds=60)
    assert claim is not None
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(
            statement.split()[0].upper() + " " + statement.split()[1 if statement.startswith("UPDATE") else 2]
        )

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        kept = [(e, {"train": {"loss": 1.0 / e}, "val": {"loss": 2.0 / e}}) for e in (1, 2, 3)]
        assert record_epochs(claim, kept, 60) is False
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements[-1] == "UPDATE jobs" and all("jobs" not in s for s in statements[:-1]), statements


def test_a_stale_attempt_cannot_overwrite_the_model(job_id) -> None:
    from worker.runner import persist_result

    stale, current = _replace_attempt(job_id)
    result = SimpleNamespace(
        artifact={"format": "rnnlab.model/1", "state_dict": {"w": torch.zeros(2)}},
        evaluation=Evaluation(
            task="forecast",
            main_metric="rmse",
            metrics={"train": {"rmse": 0.1}, "val": {"rmse": 0.1}, "test": {"rmse": 0.1}},
            intervals={"test": {"rmse": [0.05, 0.15]}},
            confidence_level=0.95,
            bootstrap_samples=10,
            baselines={},
            comparison={},
            generalization_gap=GeneralizationGap(metric="rmse", train=0.1, test=0.1, gap=0.0),
            num_examples={"train": 1, "val": 1, "test": 1},
            notes=[],
        ),
        summary=Summary(best_epoch=1, test={"rmse": 0.1}),
        train_seconds=0.1,
        epochs_run=1,
        device="cpu",
    )
    assert persist_result(current, result) == "succeeded"
    assert persist_result(stale, result) is None
    storage = get_storage()
    assert storage.exists(f"models/{job_id}-2.pt") and not storage.exists(f"models/{job_id}-1.pt")
    with new_session() as session:
        job = session.get(Job, job_id)
        assert job.status == "succeeded" and job.artifact_key == f"models/{job_id}-2.pt"


def test_a_database_hiccup_during_an_epoch_does_not_fail_the_job(job_id, monkeypatch) -> None:
    import worker.runner as runner

    real = runner.record_epochs
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("UPDATE jobs …", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "record_epochs", flaky)
    assert runner.run_job(job_id, "w1") == "succeeded"
    with new_session() as session:
        epochs = session.scalars(
            select(func.count(func.distinct(EpochMetric.epoch))).where(EpochMetric.job_id == job_id)
        ).one()
    assert calls["n"] == 3 and epochs == 3  # epoch 2 was kept and written with epoch 3: no hole


def test_missing_dataset_file_is_a_data_error(job_id) -> None:
    from app.models import Dataset
    from worker.runner import run_job

    with new_session() as session:
        dataset = session.get(Dataset, session.get(Job, job_id).dataset_id)
        get_storage().delete(dataset.storage_key)
    assert run_job(job_id, "w1") == "failed"
    with new_session() as session:
        job = session.get(Job, job_id)
    assert job.error_type == "data_error" and "missing" in job.error_message


def test_a_database_hiccup_before_training_does_not_fail_the_job(job_id, monkeypatch) -> None:
    import worker.runner as runner

    real = state.renew_lease
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        if "device" in kwargs and calls["n"] == 0:
            calls["n"] += 1
            raise OperationalError("UPDATE jobs …", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner.state, "renew_lease", flaky)
    assert runner.run_job(job_id, "w1") == "succeeded" and calls["n"] == 1


def test_a_model_that_cannot_be_stored_fails_the_job_clearly(job_id, monkeypatch) -> None:
    import errno

    import worker.runner as runner
    from app.storage import LocalStorage

    def disk_full(self, source, key):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalStorage, "put_file", disk_full)
    assert runner.run_job(job_id, "w1") == "failed"
    with new_session() as session:
        job = session.get(Job, job_id)
    assert job.error_type == "storage_error" and "RNNLAB_STORAGE_DIR" in job.error_message
    storage = get_storage()
    assert list((storage.root / "tmp").iterdir()) == [] and not (storage.root / "models").exists()


def test_event_stream_follows_a_job_handed_back_and_claimed_again(client, auth, job_id) -> None:
    import json
    import threading
    import time

    events: list[tuple[str, dict]] = []

    def listen() -> None:
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=auth) as r:
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))

    def wait_for(predicate) -> None:
        deadline = time.monotonic() + 20
        while not predicate():
            assert time.monotonic() < deadline, events
            time.sleep(0.05)

    from worker.runner import record_epoch

    with new_session() as session:
        first = state.claim_job(session, job_id, "w1", lease_seconds=60)
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    for epoch in (1, 2, 3):
        record_epoch(first, epoch, {"train": {"loss": 1.0}}, 60)
    wait_for(lambda: sum(1 for e in events if e[0] == "epoch") >= 3)
    with new_session() as session:  # the worker shuts down: handed back, then claimed elsewhere
        assert state.release_job(session, first)
        second = state.claim_job(session, job_id, "w2", lease_seconds=60)
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        session.commit()
    assert second.attempt == first.attempt  # the attempt was given back
    for epoch in (1, 2, 3, 4):
        record_epoch(second, epoch, {"train": {"loss": 0.5}}, 60)
    wait_for(lambda: any(e[0] == "epoch" and e[1]["epoch"] == 4 for e in events))
    with new_session() as session:
        state.finish_job(session, second, "cancelled")
    listener.join(timeout=20)
    new_run = [e[1]["epoch"] for e in events if e[0] == "epoch" and e[1]["metrics"]["train"]["loss"] == 0.5]
    assert new_run == [1, 2, 3, 4] and events[-1] == ("end", {"status": "cancelled"})


def _stream(client, auth, job_id: str, last_event_id: str | None = None) -> list[tuple[str, str, dict]]:
    """(id, event, data) of an event stream up to its first ``status`` event (which follows the epochs
    the stream had to send; a queued job's stream would go on) and its ``end`` when it has one."""
    import json

    headers = {**auth, **({"Last-Event-ID": last_event_id} if last_event_id is not None else {})}
    out, block = [], {}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                if block:
                    out.append((block["id"], block["event"], json.loads(block["data"])))
                    if block["event"] == "end" or (block["event"] == "status" and block["data"].find('"queued"') > 0):
                        break
                block = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                block[field] = value
    return out


def test_every_event_has_an_id_and_last_event_id_resumes_after_it(client, auth, job_id) -> None:
    from worker.runner import record_epoch

    with new_session() as session:
        first = state.claim_job(session, job_id, "w1", lease_seconds=60)
    for epoch in (1, 2, 3, 4):
        record_epoch(first, epoch, {"train": {"loss": 1.0 / epoch}}, 60)
    with new_session() as session:  # handed back: the stream of the first run stays readable
        assert state.release_job(session, first)

    whole = _stream(client, auth, job_id)
    epochs = [(i, d["epoch"]) for i, e, d in whole if e == "epoch"]
    run = epochs[0][0].split(".")[1]
    assert epochs == [(f"{n}.{run}", n) for n in (1, 2, 3, 4)]
    assert [e for _, e, _ in whole][-1] == "status" and whole[-1][0] == f"4.{run}"
    # queued again, and no worker serves its queue here: the status says what the job waits for
    assert whole[-1][2]["status"] == "queued" and "'default' queue" in whole[-1][2]["waiting_for"]

    resumed = _stream(client, auth, job_id, f"2.{run}")
    assert [d["epoch"] for _, e, d in resumed if e == "epoch"] == [3, 4]
    assert [e for _, e, _ in resumed] == ["epoch", "epoch", "status"]
    assert _stream(client, auth, job_id, f"4.{run}")[0][1] == "status"  # nothing new: the status only

    # An id of another run, or one that cannot be read, starts from epoch 1.
    for stale in (f"2.{'0' * 8}", "garbage", "", "9" * 30 + f".{run}", f"-1.{run}"):
        assert [d["epoch"] for _, e, d in _stream(client, auth, job_id, stale) if e == "epoch"] == [1, 2, 3, 4]

    with new_session() as session:  # claimed again elsewhere: a new run, whose epochs start from 1
        second = state.claim_job(session, job_id, "w2", lease_seconds=60)
        session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id))
        session.commit()
    record_epoch(second, 1, {"train": {"loss": 0.5}}, 60)
    with new_session() as session:
        state.finish_job(session, second, "cancelled")
    after = _stream(client, auth, job_id, f"4.{run}")  # the client saw 4 epochs of the old run
    assert [d["epoch"] for _, e, d in after if e == "epoch"] == [1]
    new_run = after[0][0].split(".")[1]
    assert new_run != run and after[-1] == (f"1.{new_run}", "end", {"status": "cancelled"})


def test_cancel_of_a_job_whose_worker_is_gone_cancels_it_at_once(client, auth, job_id) -> None:
    """No worker runs the recovery loop (none is alive): a running job whose lease ran out would keep
    'running' with cancel_requested forever; the cancel settles it itself."""
    with new_session() as session:
        state.claim_job(session, job_id, "gone", lease_seconds=60)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text


def test_a_job_requeued_after_its_lease_ran_out_starts_its_progress_again(job_id) -> None:
    from worker.runner import record_epoch

    with new_session() as session:
        claim = state.claim_job(session, job_id, "gone", lease_seconds=60)
    for epoch in (1, 2, 3):
        record_epoch(claim, epoch, {"train": {"loss": 1.0}}, 60)
    with new_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        assert state.expire_leases(session) == ([job_id], [])
        job = session.get(Job, job_id)
        assert job.status == "queued" and job.progress_epoch == 0
