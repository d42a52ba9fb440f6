"""End-to-end sweep checks shared by the embedded and the distributed stack."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from tests.stack import Stack, forecast_spec, sine_csv


def t_975(df: int) -> float:
    """Student t quantiles for the small df of these tests (df=2 in closed form, others from tables)."""
    return {2: 0.95 / math.sqrt(2 * 0.975 * 0.025), 1: 12.706204736, 4: 2.776445105}[df]


def get_sweep(stack: Stack, sweep_id: str) -> dict[str, Any]:
    r = stack.client.get(f"/api/v1/sweeps/{sweep_id}", headers=stack.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_for_sweep(stack: Stack, sweep_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    sweep: dict[str, Any] = {}
    while time.monotonic() < deadline:
        sweep = get_sweep(stack, sweep_id)
        if sweep["progress"]["finished"] == sweep["progress"]["total"]:
            return sweep
        time.sleep(0.5)
    raise AssertionError(f"sweep {sweep_id} did not finish in {timeout}s: {sweep['progress']}\n{stack.worker_logs()}")


def create_sweep(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = stack.client.post("/api/v1/sweeps", headers=stack.headers, json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def check_sweep_statistics_by_hand(stack: Stack) -> None:
    """A 2 settings × 3 seeds sweep finishes; its report equals statistics computed here from its jobs."""
    ds = stack.upload_csv("sine.csv", sine_csv(300))
    base = forecast_spec(ds, epochs=2)
    base["evaluation"]["bootstrap_samples"] = 20
    sweep = create_sweep(
        stack, {"name": "size", "base": base, "grid": {"model.hidden_size": [4, 8]}, "seeds": [0, 1, 2]}
    )
    done = wait_for_sweep(stack, sweep["id"])
    assert done["progress"]["succeeded"] == 6, (done["progress"], stack.worker_logs())
    report = done["report"]
    assert (report["total"], report["finished"], report["succeeded"], report["complete"]) == (6, 6, 6, True)

    evaluations: dict[str, dict[str, Any]] = {}
    per_setting: dict[str, list[dict[str, float]]] = {}
    for job in done["jobs"]:
        r = stack.client.get(f"/api/v1/jobs/{job['id']}/evaluation", headers=stack.headers)
        assert r.status_code == 200, r.text
        evaluations[job["id"]] = r.json()
        per_setting.setdefault(job["setting_key"], []).append(r.json()["metrics"]["test"])
        assert job["main_metric"] == pytest.approx(r.json()["metrics"]["test"]["rmse"])

    by_key = {s["setting_key"]: s for s in report["settings"]}
    assert set(by_key) == set(per_setting) and len(by_key) == 2
    means: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    for key, tests in per_setting.items():
        got = by_key[key]
        assert got["n"] == 3 and got["jobs"] == 3
        for name in ("rmse", "mae", "r2"):
            values = np.array([t[name] for t in tests], dtype=float)
            mean, std = float(values.mean()), float(values.std(ddof=1))
            half = t_975(2) * std / math.sqrt(3)
            # The Student t half width carried by the delta method to the scale that respects the
            # range (log of the distance to 0 for errors, to 1 for r2) and mapped back.
            if name == "r2":
                gap = 1.0 - mean
                expected = [1.0 - gap * math.exp(half / gap), 1.0 - gap * math.exp(-half / gap)]
            else:
                expected = [mean * math.exp(-half / mean), mean * math.exp(half / mean)]
            m = got["metrics"][name]
            assert m["n"] == 3
            assert m["mean"] == pytest.approx(mean, rel=1e-9) and m["std"] == pytest.approx(std, rel=1e-7, abs=1e-12)
            assert (m["min"], m["max"]) == pytest.approx((values.min(), values.max()))
            assert m["ci"] == pytest.approx(expected, rel=1e-7, abs=1e-12)
            assert m["ci"][0] > 0 if name != "r2" else m["ci"][1] < 1
            if name == "rmse":
                means[key], intervals[key] = mean, (expected[0], expected[1])
                assert got["seed_cv"] == pytest.approx(std / abs(mean), rel=1e-7, abs=1e-12)
                assert got["high_seed_variance"] is (std / abs(mean) > 0.1)

    best_key, runner_key = sorted(means, key=means.__getitem__)
    assert report["best"]["best"]["setting_key"] == best_key
    assert report["best"]["runner_up"]["setting_key"] == runner_key
    (b_low, b_high), (r_low, r_high) = intervals[best_key], intervals[runner_key]
    overlap = b_low <= r_high and r_low <= b_high
    assert report["best"]["distinguishable"] is (not overlap), report["best"]
    assert [s["setting_key"] for s in report["settings"]] == [best_key, runner_key]
    effect = report["parameters"]["model.hidden_size"]
    assert effect["range"] == pytest.approx(abs(means[best_key] - means[runner_key]), rel=1e-9)
    # One swept parameter: each value is a setting of its own, so a share of the setting means' variance
    # would be 1 whatever the parameter does (seed noise too): there is none.
    assert effect["share_of_variance"] is None

    listed = stack.client.get(f"/api/v1/jobs?sweep_id={done['id']}", headers=stack.headers).json()["items"]
    assert {j["id"] for j in listed} == set(evaluations)

    # The leaderboard of the dataset: the same jobs, best test rmse first, with interval and comparison.
    board = stack.client.get(f"/api/v1/datasets/{ds}/leaderboard?metric=test.rmse&limit=4", headers=stack.headers)
    assert board.status_code == 200, board.text
    items = board.json()["items"]
    expected = sorted(evaluations, key=lambda j: evaluations[j]["metrics"]["test"]["rmse"])[:4]
    assert [i["value"] for i in items] == pytest.approx([evaluations[j]["metrics"]["test"]["rmse"] for j in expected])
    for item in items:
        evaluation = evaluations[item["job_id"]]
        assert item["interval"] == pytest.approx(evaluation["intervals"]["test"]["rmse"])
        assert item["comparison"] == evaluation["comparison"] and "naive" in item["comparison"]
        assert item["cell"] == "gru" and item["sweep_id"] == done["id"]
        assert item["setting"]["model.hidden_size"] in (4, 8)


def check_sweep_cancel(stack: Stack) -> None:
    """Cancel a long sweep while a job runs: every job ends cancelled, none stays running."""
    ds = stack.upload_csv("long.csv", sine_csv(1500))
    base = forecast_spec(ds, epochs=2000, early_stopping_patience=None)
    sweep = create_sweep(stack, {"base": base, "grid": {"model.hidden_size": [4, 8]}, "seeds": [0, 1, 2]})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [j for j in get_sweep(stack, sweep["id"])["jobs"] if j["status"] == "running"]
        if running and stack.job(running[0]["id"])["progress"]["epoch"] >= 1:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no sweep job started training\n{stack.worker_logs()}")
    r = stack.client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=stack.headers)
    assert r.status_code == 202, r.text
    assert r.json()["cancel_requested"] >= 1 and r.json()["cancelled"] >= 1
    done = wait_for_sweep(stack, sweep["id"], timeout=90)
    assert done["progress"]["cancelled"] == 6 and done["progress"]["running"] == 0, done["progress"]
    for job in done["jobs"]:
        full = stack.job(job["id"])
        assert full["status"] == "cancelled" and full["progress"]["epoch"] < 2000
    assert done["report"]["succeeded"] == 0 and done["report"]["best"] is None
