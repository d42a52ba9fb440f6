"""Per-key limits: a request rate (the ``limits`` library) and a cap on open event streams.

The rate is counted in Redis when the broker is Redis (every API process of the distributed
deployment shares one count), in memory in the embedded deployment. The count is kept per API
key (a hash of the bearer token, so unknown keys are limited too and no key is stored in clear).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Any

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.config import get_settings
from app.errors import TooManyRequests

_state: dict[str, Any] = {"config": None, "limiter": None, "items": []}
_lock = threading.Lock()


def _limiter() -> tuple[MovingWindowRateLimiter | None, list[RateLimitItem]]:
    settings = get_settings()
    config = (settings.rate_limit, settings.broker_url)
    with _lock:
        if _state["config"] != config:
            items = parse_many(settings.rate_limit) if settings.rate_limit.strip() else []
            redis = settings.broker_url.startswith(("redis://", "rediss://"))
            storage = storage_from_string(settings.broker_url if redis else "memory://")
            _state.update(config=config, limiter=MovingWindowRateLimiter(storage) if items else None, items=items)
        return _state["limiter"], _state["items"]


def client_key(request: Request) -> str:
    """Who is counted: a hash of the bearer token, else the client address."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if token:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client else "unknown")


def enforce_rate_limit(request: Request) -> None:
    """429 ``rate_limited`` with ``Retry-After`` once the key is over RNNLAB_RATE_LIMIT."""
    limiter, items = _limiter()
    if limiter is None:
        return
    who = client_key(request)
    for item in items:
        if not limiter.hit(item, "rnnlab", who):
            reset_at = limiter.get_window_stats(item, "rnnlab", who).reset_time
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise TooManyRequests(
                "rate_limited",
                f"rate limit of {item} per API key reached; retry in {retry_after} s",
                {"limit": str(item), "retry_after_seconds": retry_after},
                retry_after_seconds=retry_after,
            )


_streams: dict[str, int] = {}
_streams_lock = threading.Lock()


def acquire_event_stream(who: str) -> None:
    """Take one of the key's event-stream slots in this process; 429 when all are taken."""
    limit = get_settings().max_event_streams_per_key
    with _streams_lock:
        open_now = _streams.get(who, 0)
        if open_now >= limit:
            raise TooManyRequests(
                "too_many_streams",
                f"this key already has {open_now} open event streams (limit {limit}); close one first",
                {"limit": limit},
                retry_after_seconds=5,
            )
        _streams[who] = open_now + 1


def release_event_stream(who: str) -> None:
    with _streams_lock:
        left = _streams.get(who, 0) - 1
        if left > 0:
            _streams[who] = left
        else:
            _streams.pop(who, None)


def open_event_streams(who: str) -> int:
    with _streams_lock:
        return _streams.get(who, 0)
