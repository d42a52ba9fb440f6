"""Sweeps with real worker processes on PostgreSQL + Redis, as in docker-compose.yml."""

from __future__ import annotations

import pytest

from tests.stack import Stack
from tests.sweeps.checks import check_sweep_cancel, check_sweep_statistics_by_hand

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def test_distributed_sweep_statistics_equal_hand_computed_ones(distributed_stack: Stack) -> None:
    distributed_stack.start_worker(concurrency=2)
    check_sweep_statistics_by_hand(distributed_stack)


def test_distributed_sweep_cancel(distributed_stack: Stack) -> None:
    if not distributed_stack.workers:
        distributed_stack.start_worker(concurrency=2)
    check_sweep_cancel(distributed_stack)
