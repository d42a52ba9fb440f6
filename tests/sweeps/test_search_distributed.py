"""tpe searches with real worker processes on PostgreSQL + Redis, as in docker-compose.yml."""

from __future__ import annotations

import pytest
import redis

from tests.stack import Stack
from tests.sweeps.search_checks import check_pruned_trial_stops_within_one_epoch, check_search_survives_restarts

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def test_distributed_pruned_trial_stops_within_one_epoch(distributed_stack: Stack) -> None:
    check_pruned_trial_stops_within_one_epoch(distributed_stack)


def test_distributed_search_survives_restarts_and_broker_loss(distributed_stack: Stack) -> None:
    distributed_stack.stop_all()

    def lose_broker() -> None:
        # This test session's own Redis database only (never FLUSHALL): every queued message is gone.
        redis.Redis.from_url(distributed_stack.env["RNNLAB_BROKER_URL"]).flushdb()

    check_search_survives_restarts(distributed_stack, lose_broker)
