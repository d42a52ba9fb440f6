"""tpe searches through the API and the search module, without a worker: validation up front,
ask-and-tell bounds under concurrent completions, pruning decisions, confirmation and the report.

Jobs are ended by writing their rows as a worker would. Runs on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db import new_session
from app.jobs.final_values import record_final_values
from app.jobs.status import ACTIVE
from app.models import EpochMetric, Job, Sweep, utcnow
from app.sweeps import search
from tests.stack import forecast_spec, sine_csv
from tests.sweeps.test_sweeps_api import counts, upload

SPACE = {
    "training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "model.hidden_size": {"choices": [4, 8, 16]},
    "model.num_layers": {"low": 1, "high": 2},
}


@pytest.fixture
def sine(client: Any, auth: dict[str, str]) -> str:
    return upload(client, auth, "sine.csv", sine_csv(200))


def tpe_body(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"name": "tpe", "base": forecast_spec(dataset_id), "search": "tpe", "space": SPACE, **extra}


def refused_field(client: Any, auth: dict[str, str], body: dict[str, Any], code: str, field: str) -> str:
    r = client.post("/api/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert field in [d["field"] for d in err["details"]], err
    assert counts() == (0, 0)  # nothing stored, nothing queued
    return str(err["message"])


def test_integer_fields_take_whole_ranges_and_steps_stay_sane(client, auth, sine) -> None:
    """A float-looking range on an integer field (2 to 4.0) drew 3.27 and every ask failed forever; a
    step of 1e-300 made Optuna raise decimal.InvalidOperation (a 500); a trial seed among the confirm
    seeds reserved jobs that never run; 2 and 2.0 were two choices."""
    for space, field in (
        ({"model.hidden_size": {"low": 2, "high": 4.5}}, "space.model.hidden_size.high"),
        ({"model.hidden_size": {"low": 2, "high": 6, "step": 1e-300}}, "space.model.hidden_size.step"),
        ({"training.learning_rate": {"low": 0.001, "high": 0.01, "step": 1e-300}}, "space.training.learning_rate.step"),
        ({"model.hidden_size": {"choices": [2, 2.0]}}, "space.model.hidden_size.choices[1]"),
    ):
        refused_field(client, auth, {**tpe_body(sine), "space": space}, "invalid_space", field)
    whole = {"model.hidden_size": {"low": 2, "high": 4.0}}
    r = client.post("/api/v1/sweeps", headers=auth, json={**tpe_body(sine, max_jobs=3, parallelism=2), "space": whole})
    assert r.status_code == 201, r.text
    assert r.json()["space"]["model.hidden_size"] == {"low": 2, "high": 4}
    assert len(r.json()["jobs"]) == 2 and all(
        isinstance(j["setting"]["model.hidden_size"], int) for j in r.json()["jobs"]
    )
    # The trial seed among the confirm seeds holds nothing back: 3 jobs leave room for trials.
    body = {**tpe_body(sine, max_jobs=3, parallelism=1, confirm_seeds=[0]), "seeds": [0]}
    assert client.post("/api/v1/sweeps", headers=auth, json=body).status_code == 201


def test_invalid_space_is_a_422_naming_the_parameter(client, auth, sine) -> None:
    space = lambda **p: {**SPACE, **p}  # noqa: E731
    refused_field(
        client,
        auth,
        tpe_body(sine, space={"model.hidden": {"low": 1, "high": 2}}),
        "invalid_space",
        "space.model.hidden",
    )
    refused_field(
        client,
        auth,
        tpe_body(sine, space=space(**{"model.num_layers": {"low": 3, "high": 1}})),
        "invalid_space",
        "space.model.num_layers.low",
    )
    refused_field(
        client,
        auth,
        tpe_body(sine, space=space(**{"training.learning_rate": {"low": 0, "high": 1, "log": True}})),
        "invalid_space",
        "space.training.learning_rate.low",
    )
    refused_field(
        client,
        auth,
        tpe_body(sine, space={"training.seed": {"choices": [1, 2]}}),
        "invalid_space",
        "space.training.seed",
    )
    refused_field(client, auth, tpe_body(sine, space={}), "invalid_space", "space")
    # Out of the spec's own bounds at one end: the end is named.
    message = refused_field(
        client,
        auth,
        tpe_body(sine, space=space(**{"model.hidden_size": {"low": 4, "high": 100000}})),
        "invalid_space",
        "space.model.hidden_size.high",
    )
    assert "hidden_size" in message
    # Does not fit the dataset (a window longer than the series) at its high end only.
    message = refused_field(
        client,
        auth,
        tpe_body(sine, space=space(**{"data.lookback": {"low": 4, "high": 500}})),
        "spec_does_not_fit_dataset",
        "space.data.lookback.high",
    )
    assert "space.data.lookback.high" in message
    refused_field(
        client,
        auth,
        tpe_body(sine, space=space(**{"model.cell": {"choices": ["gru", "tcn"]}})),
        "invalid_space",
        "space.model.cell.choices[1]",
    )


def test_invalid_search_options_are_422s_naming_the_field(client, auth, sine) -> None:
    message = refused_field(client, auth, tpe_body(sine, objective="test.rmse"), "invalid_objective", "objective")
    assert "validation" in message
    refused_field(client, auth, tpe_body(sine, objective="val.accuracy"), "invalid_objective", "objective")
    refused_field(client, auth, tpe_body(sine, objective="val.mae", pruner="median"), "invalid_objective", "pruner")
    refused_field(client, auth, tpe_body(sine, grid={"model.hidden_size": [4]}), "invalid_space", "grid")
    refused_field(client, auth, tpe_body(sine, seeds=[0, 1]), "invalid_space", "seeds")
    # Seeds 1 and 2 (0 is the trial's own) hold back 4 jobs: 5 leave no room for 2 trials.
    refused_field(client, auth, tpe_body(sine, max_jobs=5, confirm_seeds=[0, 1, 2]), "too_many_jobs", "max_jobs")
    body = {"base": forecast_spec(sine), "grid": {"model.hidden_size": [4]}, "pruner": "median"}
    refused_field(client, auth, body, "invalid_grid", "pruner")
    r = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, pruner="asha"))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "pruner", r.text


def test_a_search_asks_parallelism_trials_then_one_per_finished_trial(client, auth, sine) -> None:
    r = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=5, parallelism=2, pruner="median"))
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["search"] == "tpe" and sweep["objective"] == "val.rmse" and sweep["pruner"] == "median"
    jobs = sweep["jobs"]
    assert sorted(j["trial_number"] for j in jobs) == [0, 1] and {j["status"] for j in jobs} == {"queued"}
    for job in jobs:
        assert set(job["setting"]) == set(SPACE)
        assert 1e-4 <= job["setting"]["training.learning_rate"] <= 1e-2
        assert job["setting"]["model.hidden_size"] in (4, 8, 16) and job["setting"]["model.num_layers"] in (1, 2)
    assert search.advance_search(sweep["id"]) == []  # both slots taken: nothing more
    end_trial(jobs[0]["id"], 0.5)
    assert len(search.advance_search(sweep["id"])) == 1
    report = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    assert report["report"]["split"] == "val" and report["report"]["search"]["trials"] == 3
    assert report["report"]["search"]["done"] is False
    assert "validation" in report["report"]["search"]["selection"]


def test_trial_specs_hold_resolved_values_not_auto(client, auth, sine) -> None:
    """A base that leaves the training budget to the data: every trial and confirmation run stores the
    values it runs with (trials stored "auto" for batch size, epochs, schedule, scaling…), resolved
    from the dataset as a single job's are, and the swept values stay as asked."""
    from worker.engine.defaults import unresolved_fields
    from worker.engine.spec import JobSpec

    base = forecast_spec(sine)
    base["training"] = {"seed": 0}
    body = {**tpe_body(sine, max_jobs=6, parallelism=2, confirm_seeds=[0, 1]), "base": base}
    r = client.post("/api/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    single = client.post("/api/v1/jobs", headers=auth, json=base).json()["spec"]
    for _ in range(6):
        with new_session() as session:
            active = list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(ACTIVE))))
        for job_id in active:
            end_trial(job_id, 0.5)
        search.advance_search(sweep_id)
    jobs = client.get(f"/api/v1/sweeps/{sweep_id}", headers=auth).json()["jobs"]
    assert len(jobs) >= 4 and any(j["trial_number"] is None for j in jobs)  # trials and confirmations
    for row in jobs:
        job = {**row, **client.get(f"/api/v1/jobs/{row['id']}", headers=auth).json()}
        spec = JobSpec.model_validate(job["spec"])
        assert unresolved_fields(spec) == [], job["spec"]
        assert job["spec"]["training"]["epochs"] == single["training"]["epochs"]
        assert job["spec"]["training"]["batch_size"] == single["training"]["batch_size"]
        assert job["spec"]["training"]["learning_rate"] == job["setting"]["training.learning_rate"]


def test_a_trial_the_server_cannot_train_fails_and_the_search_goes_on(client, auth, sine, monkeypatch) -> None:
    """A point inside the space past the training-memory limit (a combination of choices no checked end
    reached; here the limit is lowered after the submit): its trial fails at once naming why, the
    search asks on and ends (the ask raised before, on every pass, and the search never moved)."""
    from app.config import get_settings

    r = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=4, parallelism=2))
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    monkeypatch.setenv("RNNLAB_MAX_TRAINING_MEMORY_BYTES", "1000")
    get_settings.cache_clear()
    for _ in range(3):
        with new_session() as session:
            active = list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(ACTIVE))))
        for job_id in active:
            end_trial(job_id, 0.5)
        search.advance_searches()  # the recovery loop's pass
    jobs = client.get(f"/api/v1/sweeps/{sweep_id}", headers=auth).json()["jobs"]
    assert len(jobs) == 4 and sorted(j["trial_number"] for j in jobs) == [0, 1, 2, 3]
    failed = [client.get(f"/api/v1/jobs/{j['id']}", headers=auth).json() for j in jobs if j["status"] == "failed"]
    assert len(failed) == 2 and all(j["error"]["type"] == "model_too_large" for j in failed), failed
    with new_session() as session:
        assert search.search_done(session, sweep_id)


def end_trial(job_id: str, val_rmse: float | None, status: str = "succeeded", curve: list[float] | None = None) -> None:
    """What a worker writes when a trial ends: its curve, status and final validation (and test) metrics."""
    with new_session() as session:
        for epoch, value in enumerate(curve or [], start=1):
            session.add(EpochMetric(job_id=job_id, epoch=epoch, split="val", name="rmse", value=value))
        session.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=utcnow()))
        if status == "succeeded" and val_rmse is not None:
            metrics = {"val": {"rmse": val_rmse}, "test": {"rmse": val_rmse * 1.1}}
            record_final_values(session, job_id, metrics, None)
        session.commit()


def in_flight(sweep_id: str) -> tuple[int, int]:
    with new_session() as session:
        active = session.scalar(select(func.count()).where(Job.sweep_id == sweep_id, Job.status.in_(ACTIVE)))
        total = session.scalar(select(func.count()).where(Job.sweep_id == sweep_id))
    return int(active or 0), int(total or 0)


def test_max_jobs_and_parallelism_hold_under_concurrent_completions(client, auth, sine) -> None:
    """Four threads end trials and ask at once (as four workers would) while a watcher samples the
    counts: never more than parallelism in flight, never more than max_jobs, every trial number once."""
    max_jobs, parallelism = 14, 3
    sweep = client.post(
        "/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=max_jobs, parallelism=parallelism)
    ).json()
    seen: list[tuple[int, int]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        while not stop.is_set():
            seen.append(in_flight(sweep["id"]))
            time.sleep(0.01)

    def finisher(index: int) -> None:
        try:
            for _ in range(200):
                with new_session() as session:
                    ids = list(
                        session.scalars(select(Job.id).where(Job.sweep_id == sweep["id"], Job.status == "queued"))
                    )
                if not ids:
                    if in_flight(sweep["id"])[1] >= max_jobs and in_flight(sweep["id"])[0] == 0:
                        return
                    search.advance_search(sweep["id"])
                    continue
                job_id = ids[index % len(ids)]
                # Like a claim: queued → running once, so only one thread ends a given job.
                with new_session() as session:
                    won = session.execute(
                        update(Job).where(Job.id == job_id, Job.status == "queued").values(status="running")
                    ).rowcount
                    session.commit()
                if won:
                    end_trial(job_id, 0.1 * (index + 1))
                    search.advance_search(sweep["id"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=finisher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    watcher.join()
    assert errors == []
    assert seen and max(active for active, _ in seen) <= parallelism
    assert max(total for _, total in seen) <= max_jobs
    with new_session() as session:
        numbers = sorted(n for n in session.scalars(select(Job.trial_number).where(Job.sweep_id == sweep["id"])))
        asked = session.get(Sweep, sweep["id"]).jobs_asked  # type: ignore[union-attr]
    assert numbers == list(range(max_jobs)) and asked == max_jobs


def test_median_pruner_decides_from_stored_curves(client, auth, sine) -> None:
    sweep = client.post(
        "/api/v1/sweeps",
        headers=auth,
        json=tpe_body(sine, max_jobs=3, parallelism=2, pruner="median", startup_trials=1),
    ).json()
    first, second = sorted(sweep["jobs"], key=lambda j: j["trial_number"])
    end_trial(first["id"], 0.2, curve=[0.5, 0.3, 0.2])
    with new_session() as session:
        session.execute(update(Job).where(Job.id == second["id"]).values(status="running"))
        session.add(EpochMetric(job_id=second["id"], epoch=1, split="val", name="rmse", value=0.4))
        session.commit()
    assert search.should_prune(second["id"]) is False  # 0.4 beats the completed trial's 0.5 at epoch 1
    with new_session() as session:
        session.add(EpochMetric(job_id=second["id"], epoch=2, split="val", name="rmse", value=0.9))
        session.commit()
    assert search.should_prune(second["id"]) is True  # 0.9 is worse than 0.3 at epoch 2


def test_hyperband_keeps_its_rungs_on_the_job(client, auth, sine) -> None:
    sweep = client.post(
        "/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=3, parallelism=1, pruner="hyperband")
    ).json()
    (trial,) = sweep["jobs"]
    with new_session() as session:
        session.execute(update(Job).where(Job.id == trial["id"]).values(status="running"))
        session.commit()
    for epoch in (1, 2, 3):  # epochs=3: every bracket has a rung by epoch 3
        with new_session() as session:
            session.add(EpochMetric(job_id=trial["id"], epoch=epoch, split="val", name="rmse", value=0.4))
            session.commit()
        assert search.should_prune(trial["id"]) is False  # the only trial: nothing to lose to
    with new_session() as session:
        attrs = session.get(Job, trial["id"]).trial_attrs  # type: ignore[union-attr]
    assert attrs and any(key.startswith("completed_rung_") for key in attrs), attrs


def test_confirmation_runs_the_best_and_runner_up_with_each_seed(client, auth, sine) -> None:
    body = tpe_body(sine, max_jobs=2 + 4, parallelism=3, confirm_seeds=[0, 1, 2])
    sweep = client.post("/api/v1/sweeps", headers=auth, json=body).json()
    trials = sorted(sweep["jobs"], key=lambda j: j["trial_number"])
    # max_jobs 6 - 4 held back for confirming the best and runner-up with seeds 1 and 2 (seed 0 is the
    # trials' own: it was held back too, and never run)
    assert len(trials) == 2
    # The second trial fails: there is no runner-up, so only the best is confirmed.
    end_trial(trials[1]["id"], None, status="failed")
    assert search.advance_search(sweep["id"]) == []  # a trial still runs: the best is not final
    end_trial(trials[0]["id"], 0.3)
    asked = search.advance_search(sweep["id"])
    assert len(asked) == 2  # seeds 1 and 2 (seed 0 is the trial itself)
    with new_session() as session:
        jobs = list(session.scalars(select(Job).where(Job.id.in_(asked))))
        assert {j.spec["training"]["seed"] for j in jobs} == {1, 2}
        assert all(j.trial_number is None and j.setting == trials[0]["setting"] for j in jobs)
    for job_id, value in zip(asked, (0.32, 0.28), strict=True):
        end_trial(job_id, value)
    assert search.advance_search(sweep["id"]) == []
    read = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    confirmation = read["report"]["search"]["confirmation"]
    assert read["report"]["search"]["done"] is True and read["report"]["complete"] is True
    # The fresh runs only (seeds 1 and 2): the trial that won the selection is reported beside them.
    assert confirmation["best"]["seeds"] == [1, 2] and confirmation["runner_up"] is None
    assert confirmation["best"]["trial_objective"] == pytest.approx(0.3)
    objective = confirmation["best"]["objective"]
    assert objective["n"] == 2 and objective["mean"] == pytest.approx(0.3)
    assert 0 <= objective["ci"][0] <= objective["mean"] <= objective["ci"][1]


def test_confirmation_with_a_runner_up_and_the_report(client, auth, sine) -> None:
    body = tpe_body(sine, max_jobs=3 + 4, parallelism=3, confirm_seeds=[5, 6])
    sweep = client.post("/api/v1/sweeps", headers=auth, json=body).json()
    trials = sorted(sweep["jobs"], key=lambda j: j["trial_number"])
    assert len(trials) == 3
    for trial, value in zip(trials, (0.5, 0.2, 0.3), strict=True):
        end_trial(trial["id"], value)
    asked = search.advance_search(sweep["id"])
    assert len(asked) == 3  # parallelism bounds the confirmation runs too
    asked += search.advance_search(sweep["id"])
    assert len(asked) == 3
    for job_id in asked:
        end_trial(job_id, 0.25)
    asked += search.advance_search(sweep["id"])
    assert len(asked) == 4  # best and runner-up × seeds 5 and 6
    for job_id in asked[3:]:
        end_trial(job_id, 0.25)
    read = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    report = read["report"]
    confirmation = report["search"]["confirmation"]
    assert confirmation["best"]["setting"] == trials[1]["setting"]
    assert confirmation["runner_up"]["setting"] == trials[2]["setting"]
    assert confirmation["best"]["objective"]["n"] == 2 and confirmation["best"]["test"]["n"] == 2  # seeds 5, 6
    assert confirmation["best"]["trial_objective"] == pytest.approx(0.2)
    assert report["search"]["done"] is True and read["progress"]["total"] == 7
    assert report["best"]["best"]["setting"] == trials[1]["setting"]  # ranked on val, not test


def test_pruned_jobs_count_in_progress_filters_and_report(client, auth, sine) -> None:
    sweep = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=2, parallelism=2)).json()
    first, second = sweep["jobs"]
    end_trial(first["id"], None, status="pruned", curve=[0.9])
    end_trial(second["id"], 0.2, curve=[0.3])
    read = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    assert read["progress"]["pruned"] == 1 and read["progress"]["finished"] == 2
    assert read["report"]["pruned"] == 1 and read["report"]["search"]["pruned"] == 1
    listed = client.get("/api/v1/jobs?status=pruned", headers=auth).json()["items"]
    assert [j["id"] for j in listed] == [first["id"]]
    metrics = client.get(f"/api/v1/jobs/{first['id']}/metrics", headers=auth).json()
    assert any(s["split"] == "val" and s["values"] == [0.9] for s in metrics["series"])


def test_cancel_stops_asking(client, auth, sine) -> None:
    sweep = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=6, parallelism=2)).json()
    r = client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=auth)
    assert r.status_code == 202 and r.json()["cancelled"] == 2
    assert search.advance_search(sweep["id"]) == []
    read = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    assert read["report"]["search"]["done"] is True and read["progress"]["total"] == 2


def test_deleting_a_search_while_it_asks_a_trial_is_all_or_nothing(client, auth, sine, monkeypatch) -> None:
    """A trial asked while the sweep is being deleted: the delete either waits for nothing of it
    (PostgreSQL: the ask waits on the sweep's row, then finds it gone) or is refused whole (SQLite: a
    409, every job kept). Before, the finished trials were committed away, the sweep's delete then
    failed on the new trial (a 500), and the search went on without its history."""
    import threading

    from app.sweeps import service as sweeps_service

    sweep_id = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=6, parallelism=2)).json()["id"]
    with new_session() as session:
        for job_id in list(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id))):
            end_trial(job_id, 0.5)
        finished = set(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id)))
    real = sweeps_service.delete_jobs

    def asked_meanwhile(session, jobs, also=()):  # the worker's recovery loop asks right now
        asker = threading.Thread(target=search.advance_search, args=(sweep_id,))
        asker.start()
        asker.join(2)
        real(session, jobs, also)

    monkeypatch.setattr(sweeps_service, "delete_jobs", asked_meanwhile)
    r = client.delete(f"/api/v1/sweeps/{sweep_id}", headers=auth)
    with new_session() as session:
        left = set(session.scalars(select(Job.id).where(Job.sweep_id == sweep_id)))
        sweep = session.get(Sweep, sweep_id)
    if r.status_code == 204:
        assert sweep is None and left == set()
    else:
        assert r.status_code == 409 and r.json()["error"]["code"] == "sweep_active", r.text
        assert sweep is not None and finished <= left  # nothing deleted


def test_recovery_asks_for_a_search_the_api_died_before_asking(client, auth, sine) -> None:
    """The API committed the sweep and died before its first ask: a worker's recovery pass asks;
    once the search is done, the pass marks it stopped and no longer reads it."""
    sweep = client.post("/api/v1/sweeps", headers=auth, json=tpe_body(sine, max_jobs=2, parallelism=2)).json()
    with new_session() as session:  # as if the first ask never happened
        for job in session.scalars(select(Job).where(Job.sweep_id == sweep["id"])):
            session.delete(job)
        session.execute(update(Sweep).where(Sweep.id == sweep["id"]).values(jobs_asked=0))
        session.commit()
    asked = search.advance_searches()
    assert len(asked[sweep["id"]]) == 2
    for job_id in asked[sweep["id"]]:
        end_trial(job_id, 0.3)
    assert search.advance_searches() == {}
    with new_session() as session:
        assert session.get(Sweep, sweep["id"]).stopped is True  # type: ignore[union-attr]
    read = client.get(f"/api/v1/sweeps/{sweep['id']}", headers=auth).json()
    assert read["report"]["search"]["done"] is True and read["report"]["complete"] is True


def test_tagging_searches_take_tagging_metrics_and_pruners(client, auth) -> None:
    rows = "\n".join(f'"ann smith went home {i}","B-PER I-PER O O O"' for i in range(40))
    dataset = upload(client, auth, "tags.csv", "review,tags\n" + rows + "\n")
    base = {
        "dataset_id": dataset,
        "task": "tagging",
        "data": {"layout": "text", "target": "tags"},
        "text": {"column": "review"},
        "model": {"hidden_size": 8},
        "training": {"epochs": 2},
        "evaluation": {"bootstrap_samples": 0, "attribution": False},
    }
    space = {"model.hidden_size": {"choices": [4, 8]}}
    body = {"name": "tags", "base": base, "search": "tpe", "space": space, "max_jobs": 2}
    # A pruner follows the per-epoch validation accuracy; span F1 is only known at the end.
    r = client.post("/api/v1/sweeps", headers=auth, json={**body, "objective": "val.span_f1", "pruner": "median"})
    assert r.status_code == 422, r.text
    assert (
        r.json()["error"]["code"] == "invalid_objective" and "val.accuracy for tagging" in r.json()["error"]["message"]
    )
    r = client.post("/api/v1/sweeps", headers=auth, json={**body, "objective": "val.rmse"})
    assert r.status_code == 422 and "tagging metric: accuracy, macro_f1, span_f1" in r.json()["error"]["message"]
    for extra in ({}, {"objective": "val.span_f1"}, {"pruner": "median"}):
        r = client.post("/api/v1/sweeps", headers=auth, json={**body, **extra})
        assert r.status_code == 201, r.text
    # …and its jobs can be sorted and filtered by span F1.
    r = client.get("/api/v1/jobs", headers=auth, params={"sort": "-test.span_f1", "where": "test.span_f1 > 0.5"})
    assert r.status_code == 200, r.text
