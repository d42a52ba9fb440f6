"""tpe searches with real worker processes on the embedded stack (SQLite + embedded broker)."""

from __future__ import annotations

import pytest

from tests.stack import Stack
from tests.sweeps.search_checks import check_pruned_trial_stops_within_one_epoch, check_search_survives_restarts

pytestmark = pytest.mark.integration


def test_pruned_trial_stops_within_one_epoch(embedded_stack: Stack) -> None:
    check_pruned_trial_stops_within_one_epoch(embedded_stack)


def test_search_survives_api_and_worker_restarts(embedded_stack: Stack) -> None:
    embedded_stack.stop_all()
    check_search_survives_restarts(embedded_stack)
