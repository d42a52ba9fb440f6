from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from app.dashboard.router import ASSETS, STATIC

ROOT = Path(__file__).resolve().parents[1]


def test_dashboard_is_served_without_a_key(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for script in ("/dashboard/vendor/echarts/echarts.min.js", "/dashboard/charts.js", "/dashboard/app.js"):
        assert script in page.text
    js = client.get("/dashboard/app.js")
    assert js.status_code == 200 and "Authorization" in js.text
    assert client.get("/dashboard/style.css").status_code == 200
    missing = client.get("/dashboard/../../etc/passwd")
    assert missing.status_code == 404
    assert client.get("/dashboard/secrets.txt").json()["error"]["code"] == "not_found"
    assert client.get("/dashboard/vendor/echarts/package.json").status_code == 404  # allow-list, not a directory


def test_vendored_echarts_is_served_with_its_licence(client) -> None:
    lib = client.get("/dashboard/vendor/echarts/echarts.min.js")
    assert lib.status_code == 200 and lib.headers["content-type"].startswith("text/javascript")
    assert "Licensed to the Apache Software Foundation" in lib.text[:2000]
    licence = client.get("/dashboard/vendor/echarts/LICENSE")
    assert licence.status_code == 200 and "Apache License" in licence.text
    assert client.get("/dashboard/vendor/echarts/NOTICE").status_code == 200


def test_every_dashboard_asset_exists_and_ships_in_the_package() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    for name in [*ASSETS, "index.html"]:
        path = STATIC / name
        assert path.is_file(), name
        relative = str(path.relative_to(ROOT / "app"))
        assert any(fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns), relative


def test_the_dashboards_compare_limit_is_the_apis(client, auth) -> None:
    """The jobs list lets at most COMPARE_LIMIT jobs be ticked: exactly as many as GET /metrics compares."""
    found = re.search(r"const COMPARE_LIMIT = (\d+);", (STATIC / "app.js").read_text())
    assert found, "app.js names its COMPARE_LIMIT"
    limit = int(found.group(1))

    def ask(n: int) -> dict:
        ids = "&".join(f"job_id={i:032x}" for i in range(1, n + 1))
        return client.get(f"/api/v1/metrics?{ids}", headers=auth).json()

    assert ask(limit + 1)["error"]["code"] == "too_many_jobs"
    assert ask(limit)["error"]["code"] != "too_many_jobs"  # refused for another reason: no such jobs
