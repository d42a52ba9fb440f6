"""Sweeps with real worker processes on the embedded stack (SQLite + embedded broker)."""

from __future__ import annotations

import pytest

from tests.stack import Stack
from tests.sweeps.checks import check_sweep_cancel, check_sweep_statistics_by_hand

pytestmark = pytest.mark.integration


def test_sweep_statistics_equal_hand_computed_ones(embedded_stack: Stack) -> None:
    embedded_stack.start_worker(concurrency=2)
    check_sweep_statistics_by_hand(embedded_stack)


def test_cancel_sweep_cancels_every_job(embedded_stack: Stack) -> None:
    if not embedded_stack.workers:
        embedded_stack.start_worker(concurrency=2)
    check_sweep_cancel(embedded_stack)
