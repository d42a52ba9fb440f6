"""What a `where` filter matches when a job has no value for the field, or one of another type.

A negation is the complement over all jobs: a job without a name, a sweep or a metric is "not equal"
to any value and "not in" any list (SQL's three-valued logic used to drop it from both sides). A spec
path that holds a number in one job and a string in another (``model.ar_ridge``: a number, "loo" or
"auto") compares only the jobs of the compared type, never failing the query (PostgreSQL's cast of
"loo" to a number was a 400 on the page that reached it) or matching as another value (SQLite cast
"loo" to 0). Each case runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from app.auth import get_or_create_project
from app.db import new_session
from app.models import Dataset, Job, JobMetric, Sweep, new_id, utcnow
from tests.stack import forecast_spec
from worker.engine import JobSpec

# key: (in the sweep, name, device, model changes, final test.rmse, best.val.loss)
JOBS: dict[str, tuple[bool, str | None, str | None, dict[str, Any], float | None, float | None]] = {
    "a": (True, "lstm-a", "cpu", {"residual": "ar", "ar_ridge": 0}, 0.3, None),
    "b": (True, None, None, {"residual": "ar", "ar_ridge": 1.0}, 0.7, None),
    "c": (False, "GRU-lstm", None, {"residual": "ar", "ar_ridge": "loo"}, None, None),
    "d": (False, None, None, {"residual": "ar", "ar_ridge": "auto"}, 0.9, 0.2),
    "e": (False, "plain", None, {"ar_ridge": None}, 0.1, 0.5),  # no ar_ridge at all
    "f": (False, "zero", None, {"residual": "last_value", "ar_ridge": 0.5}, None, None),
}
ALL = set(JOBS)


@pytest.fixture
def jobs(env: dict[str, str]) -> dict[str, str]:
    """The JOBS in project 'alpha', created in key order; returns key -> job id (and 'sweep' -> its id)."""
    now = utcnow()
    with new_session() as session:
        project = get_or_create_project(session, "alpha")
        dataset = Dataset(
            project_id=project.id, name="d", filename="d.csv", format="csv", size_bytes=1, sha256="s", storage_key="k"
        )
        session.add(dataset)
        session.flush()
        spec = JobSpec.model_validate(forecast_spec(dataset.id)).normalized()
        sweep = Sweep(
            project_id=project.id, dataset_id=dataset.id, base_spec=spec, grid={}, seeds=[0], search="grid", max_jobs=2
        )
        session.add(sweep)
        session.flush()
        ids = {"sweep": sweep.id}
        rows, metrics = [], []
        for n, (key, (in_sweep, name, device, model, rmse, best_loss)) in enumerate(JOBS.items()):
            ids[key] = job_id = new_id()
            model_spec = {**spec["model"], **model}
            if model_spec["ar_ridge"] is None:
                del model_spec["ar_ridge"]
            rows.append(
                {
                    "id": job_id,
                    "project_id": project.id,
                    "dataset_id": dataset.id,
                    "sweep_id": sweep.id if in_sweep else None,
                    "name": name,
                    "device": device,
                    "status": "succeeded" if rmse is not None else "failed",
                    "spec": {**spec, "model": model_spec},
                    "task": "forecast",
                    "cell": "gru",
                    "attempts": 1,
                    "created_at": now - timedelta(minutes=len(JOBS) - n),
                    "finished_at": None if key == "f" else now,
                }
            )
            for split, value in (("test", rmse), ("best.val", best_loss)):
                if value is not None:
                    metric = "rmse" if split == "test" else "loss"
                    metrics.append(
                        {"job_id": job_id, "project_id": project.id, "split": split, "name": metric, "value": value}
                    )
        session.execute(insert(Job), rows)
        session.execute(insert(JobMetric), metrics)
        session.commit()
    return ids


def _matching(client: Any, auth: dict[str, str], jobs: dict[str, str], where: str, **params: Any) -> set[str]:
    """The keys of the jobs a filter lists, over every page (one job a page, so each row is read)."""
    by_id = {job_id: key for key, job_id in jobs.items()}
    found: list[str] = []
    cursor = None
    while True:
        query = {"where": where.format(sweep=jobs["sweep"]), "limit": 1, **params}
        if cursor:
            query["cursor"] = cursor
        response = client.get("/api/v1/jobs", params=query, headers=auth)
        assert response.status_code == 200, (where, response.text)
        found += [by_id[item["id"]] for item in response.json()["items"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert len(found) == len(set(found)), (where, found)
    return set(found)


COMPLEMENTS = [
    # (a condition, its negation, the jobs the condition matches)
    ('sweep_id = "{sweep}"', 'sweep_id != "{sweep}"', {"a", "b"}),
    ('name = "lstm-a"', 'name != "lstm-a"', {"a"}),
    ('name = "lstm-a"', 'not name = "lstm-a"', {"a"}),
    ('name contains "lstm"', 'not name contains "lstm"', {"a", "c"}),
    ('name in ("lstm-a", "plain")', 'name not in ("lstm-a", "plain")', {"a", "e"}),
    ('device = "cpu"', 'device != "cpu"', {"a"}),
    ("test.rmse < 0.5", "not test.rmse < 0.5", {"a", "e"}),
    ("test.rmse = 0.3", "test.rmse != 0.3", {"a"}),
    ("test.rmse in (0.3, 0.9)", "test.rmse not in (0.3, 0.9)", {"a", "d"}),
    ("best.val.loss <= 0.2", "not best.val.loss <= 0.2", {"d"}),
    ("model.ar_ridge = 0", "model.ar_ridge != 0", {"a"}),
    ("model.ar_ridge in (0, 1)", "model.ar_ridge not in (0, 1)", {"a", "b"}),
    ("model.ar_ridge > 0.4", "not model.ar_ridge > 0.4", {"b", "f"}),
    ('model.ar_ridge = "loo"', 'model.ar_ridge != "loo"', {"c"}),
    ('model.residual = "ar"', 'model.residual != "ar"', {"a", "b", "c", "d"}),
    ("model.ar_ridge = null", "model.ar_ridge != null", {"e"}),
    ("finished_at = null", "finished_at != null", {"f"}),
    ('status = "succeeded"', 'not status = "succeeded"', {"a", "b", "d", "e"}),
    ('status = "succeeded"', 'status != "succeeded"', {"a", "b", "d", "e"}),
    ('device = "cpu" or test.rmse > 0.8', 'not (device = "cpu" or test.rmse > 0.8)', {"a", "d"}),
    ('name contains "lstm" and test.rmse < 0.5', 'not (name contains "lstm" and test.rmse < 0.5)', {"a"}),
    ('not name contains "lstm"', 'not not name contains "lstm"', {"b", "d", "e", "f"}),
    ('not (name != "plain" and test.rmse > 0.2)', 'name != "plain" and test.rmse > 0.2', {"c", "e", "f"}),
]


@pytest.mark.parametrize(("condition", "negation", "expected"), COMPLEMENTS)
def test_a_negation_is_the_complement_over_all_jobs(
    client: Any, auth: dict[str, str], jobs: dict[str, str], condition: str, negation: str, expected: set[str]
) -> None:
    assert _matching(client, auth, jobs, condition) == expected
    assert _matching(client, auth, jobs, negation) == ALL - expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("model.ar_ridge = 0", {"a"}),  # SQLite cast "loo" and "auto" to 0.0
        ('model.ar_ridge = "0"', set()),  # the number 0 is not the text "0"
        ("model.ar_ridge >= 0", {"a", "b", "f"}),
        ("model.ar_ridge = true", set()),  # PostgreSQL refused to cast "loo" to a boolean
        ("model.residual = 0", set()),
        ("model.residual > 1", set()),
        ('model.ar_ridge contains "o"', {"c", "d"}),
        ('model.ar_ridge in ("loo", "auto")', {"c", "d"}),
        ("model.ar_ridge in (0, 1) or test.rmse < 0.2", {"a", "b", "e"}),
    ],
)
def test_spec_values_of_another_type_do_not_match(
    client: Any, auth: dict[str, str], jobs: dict[str, str], where: str, expected: set[str]
) -> None:
    assert _matching(client, auth, jobs, where) == expected


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "test.rmse", "name"])
def test_numeric_spec_filters_page_past_a_string_value(
    client: Any, auth: dict[str, str], jobs: dict[str, str], sort: str
) -> None:
    """One page a job: a page holding "loo" or "auto" under a numeric filter used to be a 400."""
    assert _matching(client, auth, jobs, "model.ar_ridge = 0", sort=sort) == {"a"}
    assert _matching(client, auth, jobs, "model.ar_ridge > 0.5", sort=sort) == {"b"}
    assert _matching(client, auth, jobs, "model.ar_ridge != 0", sort=sort) == ALL - {"a"}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("where", "best.train.rmse < 1"),
        ("where", "last.train.accuracy > 0.5"),
        ("where", "best.val.mae < 1"),
        ("sort", "best.train.rmse"),
        ("sort", "-last.train.accuracy"),
    ],
)
def test_epoch_values_no_job_has_are_400(
    client: Any, auth: dict[str, str], jobs: dict[str, str], param: str, value: str
) -> None:
    response = client.get("/api/v1/jobs", params={param: value}, headers=auth)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == f"invalid_{param}"
    scope = value.lstrip("-").split(".")[0]
    assert f"{scope}.train.loss, {scope}.val.loss, {scope}.val.rmse, {scope}.val.accuracy" in error["message"]


def test_metrics_of_another_task_stay_valid(client: Any, auth: dict[str, str], jobs: dict[str, str]) -> None:
    """A project may mix tasks: test.accuracy among forecasts is a valid name that matches none of them."""
    assert _matching(client, auth, jobs, "test.accuracy > 0") == set()
    assert _matching(client, auth, jobs, "not test.accuracy > 0") == ALL
    assert _matching(client, auth, jobs, "best.val.accuracy > 0 or best.train.loss < 1") == set()
    assert client.get("/api/v1/jobs", params={"sort": "best.val.accuracy"}, headers=auth).status_code == 200


def test_id_filters_pick_jobs_by_id(client: Any, auth: dict[str, str], jobs: dict[str, str]) -> None:
    """``id in (…)`` fetches a chosen set of jobs in one listing (the dashboard's compare page)."""
    assert _matching(client, auth, jobs, f'id in ("{jobs["a"]}", "{jobs["d"]}", "no-such-job")') == {"a", "d"}
    assert _matching(client, auth, jobs, f'id = "{jobs["c"]}"') == {"c"}
    assert _matching(client, auth, jobs, f'id not in ("{jobs["a"]}", "{jobs["d"]}")') == ALL - {"a", "d"}
