"""A bounded property-based run of the whole API from its OpenAPI document, on PostgreSQL.

Schemathesis generates requests for every operation (valid and invalid: odd strings, huge numbers,
missing fields) and checks each answer: never a 5xx, a status the document lists for the operation,
the documented content type, and a body that matches its schema. The run is seeded and bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from app.main import create_app
from tests.datasets.conftest import set_setting
from tests.stack import forecast_spec, sine_csv

EXAMPLES_PER_OPERATION = 60
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_generated_requests_get_no_5xx_and_match_the_schema(client, auth, monkeypatch) -> None:
    set_setting(monkeypatch, rate_limit="")  # the run itself is a burst from one key
    dataset = client.post("/api/v1/datasets", headers=auth, files={"file": ("s.csv", sine_csv(200).encode())})
    client.post("/api/v1/jobs", headers=auth, json=forecast_spec(dataset.json()["id"]))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())
    requests = {"n": 0}
    failures: list[str] = []

    def exercise(operation: Any) -> None:
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            if operation.path.endswith("/events"):
                return  # a stream for a live job never ends; it is tested on its own
            response = case.call(headers=dict(auth))
            requests["n"] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, checks.FailureGroup) as exc:  # keep going, report all at the end
                failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:300]}")

        run()

    for result in schema.get_all_operations():
        exercise(result.ok())
    print(f"schemathesis: {requests['n']} requests, {len(failures)} failures")
    assert requests["n"] >= 1000
    assert failures == []
