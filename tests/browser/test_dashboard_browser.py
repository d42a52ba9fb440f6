"""The dashboard in a real headless Chromium, against a real API process with a finished job."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from app.db import new_session
from app.models import Job
from tests.conftest import IN_CI, configure, make_key
from tests.stack import ROOT, forecast_spec, sine_csv

CHROMIUM = os.environ.get("RNNLAB_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_shows_jobs_curves_and_evaluation(sqlite_env, monkeypatch, tmp_path: Path) -> None:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"Chromium not found at {CHROMIUM} (CI=true: .ci/run installs it)")
        pytest.skip(f"Chromium not found at {CHROMIUM}; apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    from worker.runner import run_job

    home = Path(sqlite_env["RNNLAB_HOME"])
    configure(monkeypatch, home, torch_threads="1")
    key = make_key("browser")
    port = _free_port()
    env = {**os.environ, "RNNLAB_HOME": str(home), "RNNLAB_PORT": str(port)}
    api = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        ds = httpx.post(
            f"{base}/api/v1/datasets", headers=headers, files={"file": ("sine.csv", sine_csv(300).encode(), "text/csv")}
        ).json()["id"]
        spec = forecast_spec(ds, epochs=4)
        spec["name"] = "browser-gru"
        spec["evaluation"]["attribution"] = True
        job = httpx.post(f"{base}/api/v1/jobs", headers=headers, json=spec).json()
        assert run_job(job["id"], "test-worker") == "succeeded"  # the worker shell, in this process
        sweep = httpx.post(
            f"{base}/api/v1/sweeps",
            headers=headers,
            json={
                "name": "size-sweep",
                "base": forecast_spec(ds, epochs=2),
                "grid": {"model.hidden_size": [4, 8]},
                "seeds": [0, 1],
            },
        ).json()
        for sweep_job in sweep["jobs"]:
            assert run_job(sweep_job["id"], "test-worker") == "succeeded"
        # A failed job whose message carries markup (messages quote column names users chose).
        bad = httpx.post(f"{base}/api/v1/jobs", headers=headers, json={**spec, "name": "xss-job"}).json()
        with new_session() as session:
            session.execute(
                update(Job)
                .where(Job.id == bad["id"])
                .values(
                    status="failed",
                    error_type="data_error",
                    error_message="feature '<img id=injected src=x onerror=\"document.title=1\">' is not numeric",
                )
            )
            session.commit()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(base + "/")
            page.fill("#api-key", key)
            page.click("#key-form button")
            row = page.locator("#jobs tbody tr", has_text="browser-gru")
            row.wait_for(timeout=10_000)
            assert "succeeded" in row.inner_text() and "4/4" in row.inner_text()
            row.click()
            page.locator("#evaluation table").wait_for(timeout=10_000)
            assert "rmse" in page.inner_text("#evaluation")
            assert "naive" in page.inner_text("#evaluation")
            assert page.locator("#curves polyline").count() >= 2  # train and val loss
            assert page.locator("#attribution .heat div").count() == 12  # 12 steps × 1 feature
            page.locator("#sweeps li", has_text="size-sweep").click()
            page.locator("#sweep-settings tbody tr").nth(1).wait_for(timeout=10_000)
            table = page.inner_text("#sweep-settings")
            assert "model.hidden_size=4" in table and "model.hidden_size=8" in table and "2/2" in table
            assert "share of variance" in page.inner_text("#sweep-parameters")
            page.locator("#jobs tbody tr", has_text="xss-job").click()
            page.locator("#detail-status", has_text="data_error").wait_for(timeout=10_000)
            assert "<img id=injected" in page.inner_text("#detail-status")  # shown as text
            assert page.locator("#injected").count() == 0
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            # The API docs render from local assets (no CDN on a self-hosted machine).
            cdn_requests: list[str] = []
            page.on("request", lambda r: cdn_requests.append(r.url) if not r.url.startswith(base) else None)
            page.goto(base + "/docs")
            page.locator(".swagger-ui .title", has_text="rnnlab").wait_for(timeout=15_000)
            assert page.locator(".opblock-summary-path", has_text="/api/v1/jobs").count() > 0
            assert cdn_requests == []
            browser.close()
    finally:
        api.terminate()
        api.wait(timeout=20)
