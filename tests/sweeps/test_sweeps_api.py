"""Sweep creation, validation, reports, cancel and leaderboard through the API (no worker needed).

Jobs are finished by writing their rows directly, as a worker would, so the statistics can be
checked against hand-computed numbers. Runs on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.config import get_settings
from app.db import new_session
from app.jobs.final_values import record_final_values
from app.models import Evaluation, Job, Sweep, utcnow
from tests.stack import forecast_spec, sine_csv
from worker.engine import results

# Student t quantile for two degrees of freedom, in closed form: (2p - 1) / sqrt(2p(1 - p)).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def upload(client: Any, auth: dict[str, str], name: str, text: str) -> str:
    r = client.post("/api/v1/datasets", headers=auth, files={"file": (name, text.encode(), "text/csv")})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


@pytest.fixture
def sine(client: Any, auth: dict[str, str]) -> str:
    return upload(client, auth, "sine.csv", sine_csv(200))


def sweep_body(dataset_id: str, grid: dict[str, list[Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "stability", "base": forecast_spec(dataset_id), "grid": grid, "seeds": [0, 1, 2], **extra}


def counts() -> tuple[int, int]:
    with new_session() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Sweep)) or 0),
            int(session.scalar(select(func.count()).select_from(Job)) or 0),
        )


def create(client: Any, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def refused(client: Any, auth: dict[str, str], body: dict[str, Any], code: str) -> dict[str, Any]:
    r = client.post("/api/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert counts() == (0, 0)  # nothing created: no sweep row, no job
    return dict(err)


# --- creation ------------------------------------------------------------------------------


def test_grid_sweep_creates_one_job_per_setting_and_seed(client, auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {"model.hidden_size": [4, 8], "model.cell": ["gru", "lstm"]}))
    assert sweep["progress"]["queued"] == sweep["progress"]["total"] == 12
    assert sweep["grid"] == {"model.hidden_size": [4, 8], "model.cell": ["gru", "lstm"]}
    assert sweep["seeds"] == [0, 1, 2] and sweep["search"] == "grid" and sweep["base"]["dataset_id"] == sine
    pairs = {(json.dumps(j["setting"], sort_keys=True), j["seed"]) for j in sweep["jobs"]}
    assert len(pairs) == 12
    assert {j["setting_key"] for j in sweep["jobs"]} == {
        json.dumps({"model.hidden_size": h, "model.cell": c}, sort_keys=True) for h in (4, 8) for c in ("gru", "lstm")
    }
    report = sweep["report"]
    assert report["succeeded"] == 0 and report["total"] == 12 and report["best"] is None
    assert report["main_metric"] == "rmse" and report["lower_is_better"] is True
    assert {s["jobs"] for s in report["settings"]} == {3} and {s["n"] for s in report["settings"]} == {0}

    # Each job's stored spec has the setting's values and its seed.
    listed = client.get(f"/api/v1/jobs?sweep_id={sweep['id']}&limit=100", headers=auth).json()["items"]
    assert len(listed) == 12
    for job in listed:
        assert job["sweep_id"] == sweep["id"] and job["status"] == "queued"
        assert job["spec"]["model"]["hidden_size"] == job["setting"]["model.hidden_size"]
        assert job["spec"]["model"]["cell"] == job["setting"]["model.cell"]
    assert sorted(j["spec"]["training"]["seed"] for j in listed) == sorted([0, 1, 2] * 4)
    assert {j["seed"] for j in sweep["jobs"]} == {0, 1, 2}


def test_empty_grid_is_a_pure_seed_study(client, auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {}, seeds=[3, 4]))
    assert sweep["progress"]["total"] == 2 and {j["setting_key"] for j in sweep["jobs"]} == {"{}"}


def test_bad_grid_value_is_refused_naming_it_and_nothing_is_created(client, auth, sine) -> None:
    err = refused(client, auth, sweep_body(sine, {"model.hidden_size": [8, 16, 5000]}), "invalid_spec")
    assert err["details"][0]["field"] == "grid.model.hidden_size[2]"
    assert "grid.model.hidden_size[2]" in err["message"]
    assert err["details"][0]["setting"] == {"model.hidden_size": 5000}

    err = refused(client, auth, sweep_body(sine, {"model.cell": ["gru", "transformer"]}), "invalid_spec")
    assert err["details"][0]["field"] == "grid.model.cell[1]"


def test_value_that_does_not_fit_the_dataset_is_refused(client, auth, sine) -> None:
    err = refused(client, auth, sweep_body(sine, {"data.lookback": [12, 500]}), "spec_does_not_fit_dataset")
    assert err["details"][0]["field"] == "grid.data.lookback[1]"
    assert "grid.data.lookback[1]" in err["message"] and "longer than" in err["message"]


def test_bad_base_field_is_named_as_base(client, auth, sine) -> None:
    body = sweep_body(sine, {"model.hidden_size": [4, 8]})
    body["base"]["training"]["epochs"] = 0
    err = refused(client, auth, body, "invalid_spec")
    assert err["details"][0]["field"] == "base.training.epochs"


@pytest.mark.parametrize(
    ("grid", "code", "field"),
    [
        ({"model.hiden_size": [4]}, "unknown_grid_path", "grid.model.hiden_size"),
        ({"optimizer": ["adam"]}, "unknown_grid_path", "grid.optimizer"),
        ({"training.seed": [1, 2]}, "reserved_grid_path", "grid.training.seed"),
        ({"dataset_id": ["x"]}, "reserved_grid_path", "grid.dataset_id"),
        ({"model.hidden_size": []}, "invalid_grid", "grid.model.hidden_size"),
        ({"model.hidden_size": [4, 8, 4]}, "invalid_grid", "grid.model.hidden_size[2]"),
        ({"data.target": ["x" * 600]}, "invalid_grid", "grid"),  # the setting would not fit setting_key
        ({"name": ["a", "b"]}, "reserved_grid_path", "grid.name"),  # a label: two identical trainings
        # A whole section would replace the base's (its epochs, hidden size ...): fields one by one.
        ({"model": [{"cell": "lstm"}]}, "invalid_grid", "grid.model"),
        ({"data.split": [{"method": "random"}]}, "invalid_grid", "grid.data.split"),
    ],
)
def test_grid_paths_are_checked(client, auth, sine, grid, code, field) -> None:
    err = refused(client, auth, sweep_body(sine, grid), code)
    assert err["details"][0]["field"] == field


def test_a_whole_section_in_the_grid_names_its_fields_and_parallelism_is_for_tpe(client, auth, sine) -> None:
    err = refused(client, auth, sweep_body(sine, {"training": [{"learning_rate": 0.01}]}), "invalid_grid")
    assert "names a whole section" in err["message"] and "training.learning_rate" in err["message"]
    err = refused(client, auth, sweep_body(sine, {"model.hidden_size": [4]}, parallelism=3), "invalid_grid")
    assert err["details"][0]["field"] == "parallelism" and "tpe" in err["message"]


def test_unknown_path_lists_the_known_ones(client, auth, sine) -> None:
    err = refused(client, auth, sweep_body(sine, {"model.hiden_size": [4]}), "unknown_grid_path")
    assert "model.hidden_size" in err["message"]


def test_too_many_jobs_says_how_many(client, auth, sine) -> None:
    body = sweep_body(sine, {"model.hidden_size": [4, 8, 16]}, max_jobs=5)
    err = refused(client, auth, body, "too_many_jobs")
    assert "9 jobs" in err["message"] and "max_jobs=5" in err["message"]
    assert err["details"]["jobs"] == 9


def test_server_bound_on_sweep_jobs(client, auth, sine, monkeypatch) -> None:
    monkeypatch.setenv("RNNLAB_MAX_SWEEP_JOBS", "4")
    get_settings.cache_clear()
    err = refused(client, auth, sweep_body(sine, {"model.hidden_size": [4, 8]}), "too_many_jobs")
    assert "6 jobs" in err["message"] and "RNNLAB_MAX_SWEEP_JOBS" in err["message"]
    # Random search is bounded too: 3 settings drawn × 3 seeds = 9 > 4.
    body = sweep_body(sine, {"model.hidden_size": [4, 8, 16, 32]}, search="random", max_jobs=3)
    assert "9 jobs" in refused(client, auth, body, "too_many_jobs")["message"]


def test_request_shape_is_validated(client, auth, sine) -> None:
    changes: list[dict[str, Any]] = [
        {"seeds": []},
        {"seeds": [1, 1]},
        {"search": "bayes"},
        {"max_jobs": 0},
        {"colour": 1},
    ]
    for change in changes:
        r = client.post("/api/v1/sweeps", headers=auth, json={**sweep_body(sine, {}), **change})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (change, r.text)
    assert counts() == (0, 0)


def test_random_search_draws_distinct_settings_deterministically(client, auth, sine) -> None:
    grid: dict[str, list[Any]] = {
        "model.hidden_size": [2, 4, 6, 8],
        "training.learning_rate": [0.001, 0.01, 0.1],
    }
    body = sweep_body(sine, grid, search="random", max_jobs=5, seeds=[0, 1], random_seed=7)
    first = create(client, auth, body)
    assert first["progress"]["total"] == 10
    keys = [j["setting_key"] for j in first["jobs"]]
    assert len(set(keys)) == 5  # five settings, no repeats, each with both seeds
    assert all(keys.count(k) == 2 for k in set(keys))
    for job in first["jobs"]:
        assert job["setting"]["model.hidden_size"] in grid["model.hidden_size"]
        assert job["setting"]["training.learning_rate"] in grid["training.learning_rate"]
    again = create(client, auth, body)
    assert {j["setting_key"] for j in again["jobs"]} == set(keys)

    everything = create(client, auth, {**body, "max_jobs": 50})  # more than the grid holds: all 12
    assert len({j["setting_key"] for j in everything["jobs"]}) == 12


def test_sweeps_of_other_projects_are_not_found(client, auth, other_auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {"model.hidden_size": [4]}))
    for method, path in (
        ("GET", f"/api/v1/sweeps/{sweep['id']}"),
        ("POST", f"/api/v1/sweeps/{sweep['id']}/cancel"),
    ):
        r = client.request(method, path, headers=other_auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "sweep_not_found"
    assert client.get("/api/v1/sweeps", headers=other_auth).json()["items"] == []
    r = client.post("/api/v1/sweeps", headers=other_auth, json=sweep_body(sine, {}))
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"
    r = client.get(f"/api/v1/datasets/{sine}/leaderboard", headers=other_auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"


def test_list_is_paginated_newest_first(client, auth, sine) -> None:
    ids = [create(client, auth, {**sweep_body(sine, {}), "name": f"s{i}", "seeds": [0]})["id"] for i in range(3)]
    page = client.get("/api/v1/sweeps?limit=2", headers=auth).json()
    assert [s["id"] for s in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    assert page["items"][0]["progress"]["total"] == 1
    rest = client.get(f"/api/v1/sweeps?limit=2&cursor={page['next_cursor']}", headers=auth).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]] and rest["next_cursor"] is None


def test_cancel_cancels_queued_jobs(client, auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {"model.hidden_size": [4, 8]}))
    with new_session() as session:  # one job already running on some worker
        running = session.scalars(select(Job).where(Job.sweep_id == sweep["id"])).first()
        assert running is not None
        session.execute(update(Job).where(Job.id == running.id).values(status="running", attempts=1))
        session.commit()
    r = client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=auth)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["cancelled"] == 5 and body["cancel_requested"] == 1
    assert body["progress"]["cancelled"] == 5 and body["progress"]["running"] == 1
    with new_session() as session:
        job = session.get(Job, running.id)
        assert job is not None and job.cancel_requested


# --- statistics over finished jobs -----------------------------------------------------------

RMSE = {4: [0.40, 0.50, 0.45], 8: [0.20, 0.22, 0.21]}


def evaluation_body(test_metrics: dict[str, float], **fields: Any) -> dict[str, Any]:
    """A complete evaluation as the engine writes it, with ``fields`` replacing its parts."""
    body = {
        "task": "forecast",
        "main_metric": "rmse",
        "metrics": {"train": {}, "val": {}, "test": test_metrics},
        "intervals": {"test": {}},
        "confidence_level": 0.95,
        "bootstrap_samples": 100,
        "baselines": {},
        "comparison": {},
        "generalization_gap": {"metric": "rmse", "train": None, "test": None, "gap": None},
        "num_examples": {"train": 10, "val": 2, "test": 2},
        "notes": [],
    }
    return results.Evaluation.model_validate({**body, **fields}).model_dump(mode="json")


def finish(job_id: str, test_metrics: dict[str, float], status: str = "succeeded", **evaluation: Any) -> None:
    """What a worker writes when a job ends: status, final metrics, evaluation."""
    with new_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=utcnow()))
        if status == "succeeded":
            # not counted: val
            record_final_values(session, job_id, {"test": test_metrics, "val": {"rmse": 99.0}}, best_epoch=None)
            session.add(Evaluation(job_id=job_id, body=evaluation_body(test_metrics, **evaluation)))
        session.commit()


def test_report_statistics_by_hand(client, auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {"model.hidden_size": [4, 8]}, seeds=[0, 1, 2, 3]))
    by_setting: dict[int, list[dict[str, Any]]] = {4: [], 8: []}
    for job in sweep["jobs"]:
        by_setting[job["setting"]["model.hidden_size"]].append(job)
    for hidden, jobs in by_setting.items():
        jobs.sort(key=lambda j: j["seed"])
        for job, value in zip(jobs, RMSE[hidden], strict=False):
            finish(job["id"], {"rmse": value, "mae": value / 2})
    finish(by_setting[4][3]["id"], {}, status="failed")  # seed 3 of size 4 failed; seed 3 of 8 still queued

    report = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    progress = report["progress"]
    assert progress == {
        "queued": 1,
        "running": 0,
        "succeeded": 6,
        "failed": 1,
        "cancelled": 0,
        "pruned": 0,
        "total": 8,
        "finished": 7,
    }
    rep = report["report"]
    assert (rep["total"], rep["finished"], rep["succeeded"], rep["complete"]) == (8, 7, 6, False)
    best, second = rep["settings"]
    assert best["setting"] == {"model.hidden_size": 8} and best["rank"] == 1 and second["rank"] == 2
    for setting in (best, second):
        values = RMSE[setting["setting"]["model.hidden_size"]]
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        half = T_975_DF2 * std / math.sqrt(3)
        m = setting["metrics"]["rmse"]
        assert setting["n"] == 3 and setting["jobs"] == 4 and m["n"] == 3
        assert m["mean"] == pytest.approx(mean) and m["std"] == pytest.approx(std)
        assert (m["min"], m["max"]) == (min(values), max(values))
        # rmse >= 0: the Student t half width carried to the log scale (delta method) and back.
        assert m["ci"] == pytest.approx([mean * math.exp(-half / mean), mean * math.exp(half / mean)], abs=1e-9)
        assert m["ci"][0] > 0
        assert setting["metrics"]["mae"]["mean"] == pytest.approx(mean / 2)
        assert setting["seed_cv"] == pytest.approx(std / mean)
        assert setting["high_seed_variance"] is (std / mean > 0.1)
    assert best["high_seed_variance"] is False and second["high_seed_variance"] is True  # cv 0.048 vs 0.111

    # 0.21 ± 0.0248 and 0.45 ± 0.1242 (on the log scale: [0.187, 0.236] and [0.341, 0.593]): apart.
    assert rep["best"]["best"]["setting_key"] == best["setting_key"]
    assert rep["best"]["runner_up"]["setting_key"] == second["setting_key"]
    assert rep["best"]["distinguishable"] is True and "do not overlap" in rep["best"]["explanation"]
    assert rep["best"]["best"]["ci"] == best["metrics"]["rmse"]["ci"]
    assert rep["best"]["runner_up"]["ci"] == second["metrics"]["rmse"]["ci"]
    assert "[0.1866" in rep["best"]["explanation"] and "[0.3415" in rep["best"]["explanation"]  # 4 digits
    effect = rep["parameters"]["model.hidden_size"]
    assert effect["range"] == pytest.approx(0.45 - 0.21) and effect["share_of_variance"] is None  # one per value
    assert {v["value"]: v["mean"] for v in effect["values"]} == pytest.approx({4: 0.45, 8: 0.21})

    listed = {j["id"]: j for j in report["jobs"]}
    assert listed[by_setting[8][0]["id"]]["main_metric"] == 0.20
    assert (
        listed[by_setting[4][3]["id"]]["main_metric"] is None and listed[by_setting[4][3]["id"]]["status"] == "failed"
    )


# --- leaderboard ---------------------------------------------------------------------------


def test_leaderboard_order_and_fields(client, auth, sine) -> None:
    sweep = create(client, auth, sweep_body(sine, {"model.cell": ["gru", "lstm"]}, seeds=[0, 1]))
    values = [0.5, 0.2, 0.4, 0.3]
    for job, rmse in zip(sweep["jobs"], values, strict=True):
        comparison = {"naive": {"metric": "rmse", "model": rmse, "baseline": 0.6, "improvement": 0.1, "beats": True}}
        finish(
            job["id"],
            {"rmse": rmse, "r2": 1 - rmse},
            intervals={"test": {"rmse": [rmse - 0.05, rmse + 0.05]}},
            comparison=comparison,
        )
    # A job that has not finished is left out.
    lone = client.post("/api/v1/jobs", headers=auth, json=forecast_spec(sine)).json()

    r = client.get(f"/api/v1/datasets/{sine}/leaderboard?metric=test.rmse&limit=3", headers=auth)
    assert r.status_code == 200, r.text
    board = r.json()
    assert board["metric"] == "test.rmse" and board["lower_is_better"] is True
    items = board["items"]
    assert [i["value"] for i in items] == [0.2, 0.3, 0.4] and [i["rank"] for i in items] == [1, 2, 3]
    top = items[0]
    assert top["job_id"] == sweep["jobs"][1]["id"] and top["cell"] == sweep["jobs"][1]["setting"]["model.cell"]
    assert top["setting"] == sweep["jobs"][1]["setting"] and top["sweep_id"] == sweep["id"] and top["name"]
    assert top["interval"] == pytest.approx([0.15, 0.25]) and top["comparison"]["naive"]["beats"] is True
    assert lone["id"] not in [i["job_id"] for i in items]

    higher = client.get(f"/api/v1/datasets/{sine}/leaderboard?metric=test.r2", headers=auth).json()
    assert higher["lower_is_better"] is False
    assert [i["value"] for i in higher["items"]] == pytest.approx([0.8, 0.7, 0.6, 0.5])
    assert higher["items"][0]["interval"] is None  # the evaluation has no interval for r2

    for bad in ("rmse", "test.", "train.rmse.x"):
        r = client.get(f"/api/v1/datasets/{sine}/leaderboard?metric={bad}", headers=auth)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_metric", bad
    assert client.get("/api/v1/datasets/nope/leaderboard", headers=auth).status_code == 404


def test_values_giving_the_same_spec_are_refused(client, auth) -> None:
    from app.db import new_session
    from app.models import Job, Sweep
    from tests.stack import forecast_spec, sine_csv

    ds = client.post(
        "/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(200).encode(), "text/csv")}
    ).json()["id"]
    r = client.post(
        "/api/v1/sweeps",
        headers=auth,
        json={"base": forecast_spec(ds), "grid": {"training.learning_rate": [1, 1.0]}, "seeds": [0]},
    )
    assert r.status_code == 422, r.text
    assert "same job spec" in r.json()["error"]["message"]
    with new_session() as session:
        assert session.query(Sweep).count() == 0 and session.query(Job).count() == 0
