"""Job submission, validation, listing and cancel through the API (no worker needed)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import new_session
from app.jobs import state
from app.jobs.dispatch import recover_jobs
from app.models import Job, JobMetric, utcnow
from app.queue import broker_job_ids
from tests.stack import forecast_spec, sine_csv


def upload(client, auth, name: str, text: str) -> str:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": (name, text.encode(), "text/csv")})
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


@pytest.fixture
def sine(client, auth) -> str:
    return upload(client, auth, "sine.csv", sine_csv(200))


def queued_files() -> list[Path]:
    return list((get_settings().broker_dir / "queue").glob("*.msg"))


def test_submit_stores_normalized_spec_and_enqueues(client, auth, sine) -> None:
    r = client.post(
        "/api/v1/jobs",
        headers=auth,
        json={
            "dataset_id": sine,
            "task": "forecast",
            "data": {"layout": "series", "target": "value"},
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["attempts"] == 0
    spec = job["spec"]
    assert spec["model"] == {
        "cell": "lstm",
        "hidden_size": 64,
        "num_layers": 1,
        "bidirectional": False,
        "dropout": 0.0,
        "pooling": "last",
        "residual": "ar",
        "ar_ridge": "loo",
        "ar_scale": "select",
        "combine": "inverse_mse",
        "differences": False,
        "ensemble": 1,
        "forget_gate_bias": 1.0,
        "embedding_dim": None,
        "patch": 1,
    }
    assert spec["training"]["loss"] == "mse" and spec["data"]["split"]["method"] == "temporal"
    assert spec["training"]["learning_rate"] == 0.001
    # Data-aware defaults are resolved at submit time: 200 rows, lookback 24 → 176 windows, of
    # which 124 train (temporal split 70/15/15) → batch 8 (≈ √124), 16 steps an epoch.
    training = spec["training"]
    assert training["batch_size"] == 8 and training["epochs"] == 94  # ⌈1500 steps / 16⌉
    assert training["early_stopping_patience"] == 47 and training["early_stopping_min_delta"] == 0.001
    assert training["schedule"] == "one_cycle" and training["warmup_steps"] == 75  # 5% of 94 × 16
    assert spec["data"]["scaling"] == "standard" and training["mixup"] == 0.0  # mixup is for classes
    assert job["progress"] == {"epoch": 0, "epochs": 94}
    assert job["id"] in (broker_job_ids() or set())  # the embedded broker holds it (task id = job id)
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=auth).json()["spec"] == spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"hidden_size": 5000}}, "model.hidden_size"),
        ({"model": {"num_layers": 9}}, "model.num_layers"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"batch_size": 70000}}, "training.batch_size"),
        ({"data": {"layout": "series", "target": "value", "lookback": 100001}}, "data.lookback"),
        ({"model": {"cell": "transformer"}}, "model.cell"),
        ({"colour": "red"}, "colour"),
        ({"data": {"layout": "series"}}, "data.target"),
        ({"model": {"combine": "median"}}, "model.combine"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(client, auth, sine, change, field) -> None:
    spec = {"dataset_id": sine, "task": "forecast", "data": {"layout": "series", "target": "value"}, **change}
    r = client.post("/api/v1/jobs", headers=auth, json=spec)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_spec"
    assert any(d["field"] == field for d in err["details"]), err
    with new_session() as session:
        assert session.scalars(select(Job)).first() is None


def test_spec_that_does_not_fit_the_dataset(client, auth, sine) -> None:
    base = {"dataset_id": sine, "task": "forecast"}
    r = client.post("/api/v1/jobs", headers=auth, json={**base, "data": {"layout": "series", "target": "temp"}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "spec_does_not_fit_dataset" and "temp" in err["message"]
    assert err["details"][0]["field"] == "data.target"
    r = client.post(
        "/api/v1/jobs", headers=auth, json={**base, "data": {"layout": "series", "target": "value", "lookback": 500}}
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"].startswith("data.")


def test_one_class_target_and_non_numeric_wide_columns(client, auth) -> None:
    one_class = "label,s1,s2,s3\n" + "\n".join(f"a,{i},{i + 1},{i + 2}" for i in range(30)) + "\n"
    ds = upload(client, auth, "one.csv", one_class)
    r = client.post(
        "/api/v1/jobs",
        headers=auth,
        json={"dataset_id": ds, "task": "classification", "data": {"layout": "wide", "target": "label"}},
    )
    assert r.status_code == 422 and "class" in r.json()["error"]["message"]
    wide = "label,s1,s2,s3\n" + "\n".join(f"{i % 2},{i},x{i},{i + 2}" for i in range(30)) + "\n"
    ds = upload(client, auth, "wide.csv", wide)
    r = client.post(
        "/api/v1/jobs",
        headers=auth,
        json={"dataset_id": ds, "task": "classification", "data": {"layout": "wide", "target": "label"}},
    )
    assert r.status_code == 422 and "s2" in r.json()["error"]["message"], r.text


def test_other_projects_cannot_see_or_use(client, auth, other_auth, sine) -> None:
    r = client.post("/api/v1/jobs", headers=other_auth, json=forecast_spec(sine))
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()
    for path in ("", "/metrics", "/evaluation", "/model"):
        assert client.get(f"/api/v1/jobs/{job['id']}{path}", headers=other_auth).status_code == 404
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=other_auth).status_code == 404
    assert client.get("/api/v1/jobs", headers=other_auth).json()["items"] == []


def test_cancel_queued_job_at_once_and_finished_job_409(client, auth, sine) -> None:
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    # A worker that picks the message up afterwards cannot claim it.
    with new_session() as session:
        assert state.claim_job(session, job["id"], "w1", 10) is None


def test_results_of_unfinished_job_are_409(client, auth, sine) -> None:
    job = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()
    for path in ("/evaluation", "/model"):
        r = client.get(f"/api/v1/jobs/{job['id']}{path}", headers=auth)
        assert r.status_code == 409 and r.json()["error"]["details"] == {"status": "queued"}
    r = client.post(f"/api/v1/jobs/{job['id']}/predict", headers=auth, json={"inputs": [[[0.0]]]})
    assert r.status_code == 409
    assert client.get(f"/api/v1/jobs/{job['id']}/metrics", headers=auth).json()["series"] == []


def _project_of(session: Session, job_id: str) -> str:
    return session.scalars(select(Job.project_id).where(Job.id == job_id)).one()


def _set_metric(job_id: str, split: str, name: str, value: float, status: str = "succeeded") -> None:
    with new_session() as session:
        session.add(
            JobMetric(job_id=job_id, project_id=_project_of(session, job_id), split=split, name=name, value=value)
        )
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
        session.commit()


def test_list_filters_sort_where_and_pagination(client, auth, sine) -> None:
    ids = []
    for cell, rmse in (("lstm", 0.3), ("gru", 0.2), ("rnn", 0.9)):
        spec = forecast_spec(sine)
        spec["model"]["cell"] = cell
        ids.append(client.post("/api/v1/jobs", headers=auth, json=spec).json()["id"])
        _set_metric(ids[-1], "test", "rmse", rmse)
    get = lambda q: client.get(f"/api/v1/jobs?{q}", headers=auth)  # noqa: E731
    assert [j["id"] for j in get("sort=test.rmse").json()["items"]] == [ids[1], ids[0], ids[2]]
    assert [j["id"] for j in get("sort=-test.rmse").json()["items"]] == [ids[2], ids[0], ids[1]]
    assert [j["id"] for j in get("cell=gru").json()["items"]] == [ids[1]]
    assert len(get("status=succeeded&status=queued&task=forecast").json()["items"]) == 3
    assert get("status=queued").json()["items"] == []
    where = 'test.rmse < 0.5 and model.cell in ("lstm", "gru")'
    assert {j["id"] for j in get(f"where={where}").json()["items"]} == {ids[0], ids[1]}
    assert {
        j["id"] for j in get('where=model.hidden_size = 8 and (test.rmse > 0.5 or model.cell = "gru")').json()["items"]
    } == {ids[1], ids[2]}
    bad = get("where=test.rmse <<< 3")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_where"
    assert get("where=colour = 1").status_code == 400
    assert get("sort=shoe_size").status_code == 400
    page1 = get("limit=2").json()
    page2 = get(f"limit=2&cursor={page1['next_cursor']}").json()
    assert len(page1["items"]) == 2 and len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert {j["id"] for j in page1["items"] + page2["items"]} == set(ids)
    assert get("cursor=garbage").status_code == 400


def test_claim_is_exclusive_and_leases_expire(client, auth, sine) -> None:
    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    with new_session() as session:
        first = state.claim_job(session, job_id, "w1", lease_seconds=60)
        assert first is not None and first.attempt == 1
        assert state.claim_job(session, job_id, "w2", lease_seconds=60) is None  # redelivery does nothing
        assert state.renew_lease(session, first, 60) is False
        stale = state.Claim(job_id, "w2", 1)
        assert state.renew_lease(session, stale, 60) is None and not state.finish_job(session, stale, "succeeded")
        # Lease expiry with attempts left → queued again; the old holder's claim is void.
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        assert state.expire_leases(session) == ([job_id], [])
        assert session.get(Job, job_id).status == "queued"
        assert not state.finish_job(session, first, "succeeded")
        second = state.claim_job(session, job_id, "w2", lease_seconds=60)
        assert second is not None and second.attempt == 2
        # Out of attempts → failed with a reason a user can read.
        session.execute(
            update(Job).where(Job.id == job_id).values(max_attempts=2, lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        assert state.expire_leases(session) == ([], [job_id])
        session.expire_all()
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.error_type == "worker_lost"
        assert "worker lost" in job.error_message


def test_recovery_redispatches_jobs_the_broker_lost(client, auth, sine) -> None:
    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    for f in queued_files():
        f.unlink()  # the broker lost the message
    assert job_id not in (broker_job_ids() or set())
    with new_session() as session:  # past the dispatch grace period
        session.execute(update(Job).values(dispatched_at=utcnow() - timedelta(seconds=60)))
        session.commit()
    assert recover_jobs()["dispatched"] == [job_id]
    assert job_id in (broker_job_ids() or set())
    assert recover_jobs()["dispatched"] == []  # held by the broker again: not sent twice


def test_compare_metrics_downsamples_and_scopes(client, auth, other_auth, sine) -> None:
    from app.models import EpochMetric

    ids = [client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"] for _ in range(2)]
    with new_session() as session:
        for job_id in ids:
            session.add_all(
                EpochMetric(job_id=job_id, epoch=e, split=split, name="loss", value=1.0 / e)
                for e in range(1, 1001)
                for split in ("train", "val")
            )
        session.commit()
    r = client.get(f"/api/v1/metrics?job_id={ids[0]}&job_id={ids[1]}&name=val.loss&max_points=100", headers=auth)
    assert r.status_code == 200, r.text
    jobs = r.json()["jobs"]
    assert [j["job_id"] for j in jobs] == ids
    (series,) = jobs[0]["series"]
    assert series["split"] == "val" and len(series["epochs"]) == 100
    assert series["epochs"][0] == 1 and series["epochs"][-1] == 1000
    assert series["values"][-1] == 1.0 / 1000
    assert client.get(f"/api/v1/metrics?job_id={ids[0]}", headers=other_auth).status_code == 404
    # A name that no epoch ever carries is refused naming it, not answered with empty series.
    bad_names = ("val.nonsense", "test.rmse", "loss", "val.loss.x", "x" * 10_000, "train.rmse", "train.accuracy")
    for i, bad in enumerate(bad_names):  # train reports only its loss per epoch
        r = client.get("/api/v1/metrics", params={"job_id": ids[0], "name": ["train.loss", bad]}, headers=auth)
        assert r.status_code == 422, (i, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_metric" and error["details"][0]["field"] == "name[1]"
        assert "train.loss, val.loss, val.rmse, val.accuracy" in error["message"] and len(error["message"]) < 300


def test_prometheus_metrics(client, auth, sine, monkeypatch) -> None:
    client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine))
    monkeypatch.setenv("RNNLAB_METRICS_ACCESS", "open")
    get_settings.cache_clear()
    text = client.get("/metrics").text
    assert 'rnnlab_jobs{status="queued",queue="default"} 1' in text
    assert "rnnlab_datasets 1" in text and "rnnlab_ready 1" in text


@pytest.mark.parametrize(
    "where",
    [
        "model.bidirectional = true",
        "evaluation.attribution != false",
        'created_at > "2024-01-01"',
        'finished_at = null or created_at < "2999-01-01T00:00:00+00:00"',
        'data.target = "value"',
        "training.learning_rate in (0.001, 0.01)",
    ],
)
def test_where_accepts_typed_comparisons(client, auth, sine, where) -> None:
    client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine))
    r = client.get("/api/v1/jobs", params={"where": where}, headers=auth)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("model.bidirectional < true", "true or false"),
        ("created_at > 5", "ISO 8601"),
        ('finished_at = "x"', "ISO 8601"),
        ("status = 1", "quoted string"),
        ('attempts = "x"', "number"),
        ('test.rmse = "abc"', "number"),
        ("model.cell in (1, 2)", "quoted string"),
        ("(" * 400 + "status = 'queued'" + ")" * 400, "nests deeper"),
        ('created_at > "0001-01-01T00:00:00+01:00"', "ISO 8601"),
        (" or ".join(["attempts = 1"] * 3000), "longer than"),
        (" or ".join(["attempts=1"] * 100), "comparisons"),
    ],
)
def test_where_refuses_mismatched_types_with_400(client, auth, sine, where, says) -> None:
    client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine))
    r = client.get("/api/v1/jobs", params={"where": where}, headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_where" and says in r.json()["error"]["message"]


def test_a_spec_value_of_another_type_matches_nothing(client, auth, sine) -> None:
    """data.target holds text: compared with a number it matches no job, on both databases (PostgreSQL
    answered a 400 from its cast, SQLite an empty list)."""
    client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine))
    r = client.get("/api/v1/jobs", params={"where": "data.target > 5"}, headers=auth)
    assert r.status_code == 200 and r.json()["items"] == [], r.text


def test_where_contains_finds_a_substring_in_any_case(client, auth, sine) -> None:
    names = ["Alpha-LSTM", "beta_lstm", "gamma-gru", "50%_off", "5000_off"]
    for name in names:
        assert client.post("/api/v1/jobs", headers=auth, json={**forecast_spec(sine), "name": name}).status_code == 201

    def found(where: str) -> set[str]:
        r = client.get("/api/v1/jobs", params={"where": where}, headers=auth)
        assert r.status_code == 200, r.text
        return {j["name"] for j in r.json()["items"]}

    assert found('name contains "lstm"') == {"Alpha-LSTM", "beta_lstm"}
    assert found('name contains "%"') == {"50%_off"}  # % and _ are characters, not LIKE wildcards
    assert found('name contains "a_l"') == {"beta_lstm"}
    assert found('not name contains "lstm" and data.target contains "VAL"') == {"gamma-gru", "50%_off", "5000_off"}
    for where, says in (('test.rmse contains "1"', "text fields"), ("name contains 5", "quoted string")):
        r = client.get("/api/v1/jobs", params={"where": where}, headers=auth)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_a_requeued_job_cancelled_before_its_next_run_reports_the_epochs_it_kept(client, auth, sine) -> None:
    from app.models import EpochMetric

    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    with new_session() as session:
        assert state.claim_job(session, job_id, "w1", lease_seconds=60) is not None
        session.add_all(EpochMetric(job_id=job_id, epoch=e, split="train", name="loss", value=1.0) for e in (1, 2, 3))
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        assert state.expire_leases(session) == ([job_id], [])  # requeued: progress starts again at 0
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()["progress"]["epoch"] == 0
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.json()["status"] == "cancelled"
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth).json()
    series = client.get(f"/api/v1/jobs/{job_id}/metrics", headers=auth).json()["series"]
    # Progress and learning curves agree: the lost attempt's three epochs, kept.
    assert job["progress"]["epoch"] == 3 and max(max(s["epochs"]) for s in series) == 3


def test_forged_cursor_is_400(client, auth) -> None:
    import base64
    import json

    forged = base64.urlsafe_b64encode(json.dumps({"o": 10**20}).encode()).decode()
    for path in ("/api/v1/jobs", "/api/v1/datasets", "/api/v1/sweeps"):
        r = client.get(path, params={"cursor": forged}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor", path


def test_cancel_racing_a_requeue_never_leaves_a_job_stuck(client, auth, sine) -> None:
    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    with new_session() as session:
        assert state.claim_job(session, job_id, "w1", lease_seconds=60) is not None
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        now = utcnow()
        (row,) = state.expired_leases(session, now)  # recovery reads the row: no cancel yet
        session.commit()
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth)  # the user cancels in between
    # The lease has run out: the cancel itself settles the job (no worker may be left to see it).
    assert r.status_code == 202 and r.json()["cancel_requested"] and r.json()["status"] == "cancelled"
    with new_session() as session:
        assert state.settle_expired(session, row, now) is None  # the stale decision does not apply
        session.commit()
        assert state.expire_leases(session) == ([], [])  # nothing left for the next pass
        assert session.get(Job, job_id).status == "cancelled"
        # The other interleaving: requeued first, then a cancel request on a queued job.
        other = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
        session.execute(update(Job).where(Job.id == other).values(cancel_requested=True))
        session.commit()
        state.expire_leases(session)
        session.expire_all()
        assert session.get(Job, other).status == "cancelled"


def _npz(client, auth, **arrays) -> str:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    r = client.post(
        "/api/v1/datasets", headers=auth, files={"file": ("a.npz", buf.getvalue(), "application/octet-stream")}
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def test_data_problems_are_refused_before_queueing(client, auth) -> None:
    import numpy as np

    def submit(ds: str, task: str, data: dict) -> dict:
        r = client.post("/api/v1/jobs", headers=auth, json={"dataset_id": ds, "task": task, "data": data})
        assert r.status_code == 422, r.text
        return r.json()["error"]

    inf = upload(client, auth, "inf.csv", "value\n" + "\n".join(["1.0", "inf"] * 50) + "\n")
    err = submit(inf, "forecast", {"layout": "series", "target": "value", "lookback": 4})
    assert "infinite" in err["message"] and err["details"][0]["field"] == "data.target"

    wide = upload(
        client,
        auth,
        "wide-missing.csv",
        "label,s1,s2\n" + "\n".join(f"{i % 2},{i},{'' if i == 7 else i}" for i in range(40)) + "\n",
    )
    err = submit(wide, "classification", {"layout": "wide", "target": "label"})
    assert "missing" in err["message"] and "s2" in err["message"]

    seq = upload(
        client,
        auth,
        "seq.csv",
        "sid,step,label,f\n"
        + "\n".join(f"{i // 4},{i % 4},{(i // 4) % 2},{'x' if i == 5 else i}" for i in range(80))
        + "\n",
    )
    err = submit(
        seq,
        "classification",
        {"layout": "sequences", "target": "label", "features": ["f"], "sequence_column": "sid", "order_column": "step"},
    )
    assert "'f'" in err["message"] and err["details"][0]["field"] == "data.features"

    empty_steps = _npz(client, auth, X=np.zeros((20, 0, 3)), y=np.arange(20) % 2)
    err = submit(empty_steps, "classification", {"layout": "arrays", "target": "y"})
    assert "at least one time step" in err["message"]

    inf_x = _npz(client, auth, X=np.full((20, 5, 2), np.inf), y=np.arange(20) % 2)
    assert "infinite" in submit(inf_x, "classification", {"layout": "arrays", "target": "y"})["message"]


def test_huge_numbers_are_refused_not_500(client, auth, sine) -> None:
    spec = forecast_spec(sine)
    spec["data"]["stride"] = 10**30
    r = client.post("/api/v1/jobs", headers=auth, json=spec)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "data.stride"
    r = client.post("/api/v1/sweeps", headers=auth, json={"base": forecast_spec(sine), "max_jobs": 10**30})
    assert r.status_code == 422


def test_delete_finished_jobs_then_the_dataset(client, auth, other_auth, sine) -> None:
    from app.storage import get_storage

    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    r = client.delete(f"/api/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_active"
    r = client.delete(f"/api/v1/datasets/{sine}", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_in_use"
    _set_metric(job_id, "test", "rmse", 0.5)  # finished, with a final metric
    storage = get_storage()
    model = storage.temp_path(".pt")
    storage.put_file(model, f"models/{job_id}-1.pt")
    with new_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(artifact_key=f"models/{job_id}-1.pt"))
        session.commit()
    assert client.delete(f"/api/v1/datasets/{sine}", headers=auth).json()["error"]["code"] == "dataset_referenced"
    assert client.delete(f"/api/v1/jobs/{job_id}", headers=other_auth).status_code == 404
    assert client.delete(f"/api/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth).status_code == 404
    assert not storage.exists(f"models/{job_id}-1.pt")
    with new_session() as session:
        assert session.scalars(select(JobMetric).where(JobMetric.job_id == job_id)).first() is None
    assert client.delete(f"/api/v1/datasets/{sine}", headers=auth).status_code == 204


def test_delete_sweep_with_its_jobs(client, auth, sine) -> None:
    sweep = client.post(
        "/api/v1/sweeps",
        headers=auth,
        json={"base": forecast_spec(sine), "grid": {"model.hidden_size": [4, 8]}, "seeds": [0]},
    ).json()
    job_ids = [j["id"] for j in sweep["jobs"]]
    assert client.delete(f"/api/v1/jobs/{job_ids[0]}", headers=auth).json()["error"]["code"] == "job_in_sweep"
    assert client.delete(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()["error"]["code"] == "sweep_active"
    client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=auth)
    assert client.delete(f"/api/v1/sweeps/{sweep['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).status_code == 404
    assert all(client.get(f"/api/v1/jobs/{j}", headers=auth).status_code == 404 for j in job_ids)
    assert client.delete(f"/api/v1/datasets/{sine}", headers=auth).status_code == 204


def test_unknown_metric_names_are_errors_not_empty_results(client, auth, sine) -> None:
    r = client.get("/api/v1/jobs", params={"where": "test.rsme < 1"}, headers=auth)
    assert r.status_code == 400 and "rmse" in r.json()["error"]["message"]  # lists the known metrics
    r = client.get("/api/v1/jobs", params={"sort": "test.nope"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_sort"
    r = client.get(f"/api/v1/datasets/{sine}/leaderboard", params={"metric": "test.nope"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_metric"


def test_metrics_as_csv_one_row_per_epoch(client, auth, other_auth, sine) -> None:
    from app.models import EpochMetric

    job_id = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()["id"]
    with new_session() as session:
        session.add_all(
            EpochMetric(job_id=job_id, epoch=e, split=split, name="loss", value=1.0 / e)
            for e in (1, 2, 3)
            for split in ("train", "val")
        )
        session.add(EpochMetric(job_id=job_id, epoch=2, split="val", name="rmse", value=0.25))
        session.commit()
    r = client.get(f"/api/v1/jobs/{job_id}/metrics?format=csv", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f"rnnlab-{job_id}-metrics.csv" in r.headers["content-disposition"]
    assert r.text.splitlines() == [
        "epoch,train.loss,val.loss,val.rmse",
        "1,1.0,1.0,",
        "2,0.5,0.5,0.25",
        f"3,{1 / 3!r},{1 / 3!r},",
    ]
    assert client.get(f"/api/v1/jobs/{job_id}/metrics?format=xml", headers=auth).status_code == 422
    assert client.get(f"/api/v1/jobs/{job_id}/metrics?format=csv", headers=other_auth).status_code == 404


def test_a_bug_in_sql_stays_a_500_and_a_locked_database_is_a_503(client, auth, monkeypatch) -> None:
    from sqlalchemy import text

    from app.jobs import service

    def broken(session, *args, **kwargs):  # a missing column: SQLite's OperationalError, PostgreSQL's ProgrammingError
        session.execute(text("SELECT no_such_column FROM jobs"))

    monkeypatch.setattr(service, "list_jobs", broken)
    r = client.get("/api/v1/jobs", headers=auth)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"  # not "try again"

    def locked(session, *args, **kwargs):
        import sqlite3

        from sqlalchemy.exc import OperationalError

        raise OperationalError("UPDATE jobs", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(service, "list_jobs", locked)
    r = client.get("/api/v1/jobs", headers=auth)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_busy"
    assert r.headers["retry-after"] == "5"
