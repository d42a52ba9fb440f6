"""Per-key limits: a request rate (the ``limits`` library) and a cap on open event streams.

The rate and the open event streams are counted in Redis when the broker is Redis (every API
process of the distributed deployment shares one count), in memory in the embedded deployment. The count is kept per API
key (a hash of the bearer token, so unknown keys are limited too and no key is stored in clear).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.config import get_settings
from app.errors import TooManyRequests

log = logging.getLogger(__name__)
_state: dict[str, Any] = {"config": None, "limiter": None, "items": [], "in_redis": False}
_lock = threading.Lock()


def _limiter() -> tuple[MovingWindowRateLimiter | None, list[RateLimitItem], bool]:
    """The limiter (None when no limit is set), its limits, and whether it counts in Redis."""
    settings = get_settings()
    config = (settings.rate_limit, settings.broker_url)
    with _lock:
        if _state["config"] != config:
            items = parse_many(settings.rate_limit) if settings.rate_limit.strip() else []
            redis = settings.broker_url.startswith(("redis://", "rediss://"))
            # Short timeouts: while Redis is away, requests go on uncounted (see _check_rate).
            options = {"socket_timeout": 2, "socket_connect_timeout": 2} if redis else {}
            storage = storage_from_string(settings.broker_url if redis else "memory://", **options)
            _state.update(
                config=config,
                limiter=MovingWindowRateLimiter(storage) if items else None,
                items=items,
                in_redis=redis,
            )
        return _state["limiter"], _state["items"], _state["in_redis"]


def client_key(request: Request) -> str:
    """Who is counted: a hash of the bearer token, else the client address."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if token:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return "addr:" + (request.client.host if request.client else "unknown")


async def enforce_rate_limit(request: Request) -> None:
    """429 ``rate_limited`` with ``Retry-After`` once the key is over RNNLAB_RATE_LIMIT.

    A coroutine: with no limit set it costs nothing, and the in-memory count is plain CPU work; only
    a count kept in Redis (network I/O) runs in a worker thread.
    """
    limiter, items, in_redis = _limiter()
    if limiter is None:
        return
    who = client_key(request)
    if in_redis:
        await run_in_threadpool(_check_rate, limiter, items, who)
    else:
        _check_rate(limiter, items, who)


# While the count's store (Redis) cannot be reached, requests are let through uncounted rather than
# answered 500: an outage of the broker must not take the API down with it (submits still answer 201;
# the jobs wait in SQL). After a failure the store is left alone for this long, then tried again.
STORE_RETRY_SECONDS = 5.0
_store_down_until = {"at": 0.0}


def _check_rate(limiter: MovingWindowRateLimiter, items: list[RateLimitItem], who: str) -> None:
    if time.monotonic() < _store_down_until["at"]:
        return
    try:
        _hit(limiter, items, who)
    except TooManyRequests:
        raise
    except Exception as exc:  # the store's own errors (redis ConnectionError, TimeoutError, …)
        _store_down_until["at"] = time.monotonic() + STORE_RETRY_SECONDS
        log.warning("rate limit not counted for %s s: its store is unreachable (%s)", STORE_RETRY_SECONDS, exc)


def _hit(limiter: MovingWindowRateLimiter, items: list[RateLimitItem], who: str) -> None:
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

# In the distributed mode the open streams of a key are counted in Redis, across API processes: a
# sorted set per key of stream tokens scored by when they lapse. An open stream refreshes its token
# (STREAM_TTL_SECONDS); one left behind by a killed API process lapses instead of holding a slot.
STREAM_TTL_SECONDS = 60.0
STREAM_REFRESH_SECONDS = 20.0
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local open_now = redis.call('ZCARD', KEYS[1])
if open_now >= tonumber(ARGV[3]) then return -open_now - 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return open_now + 1
"""
_redis: dict[str, Any] = {"key": None, "client": None}


def _stream_redis() -> Any:
    """The Redis client for stream counts, or None in the embedded mode."""
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    with _streams_lock:
        if _redis["key"] != (url, os.getpid()):
            import redis

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
            _redis.update(key=(url, os.getpid()), client=client)
        return _redis["client"]


def streams_in_redis() -> bool:
    return get_settings().broker_url.startswith(("redis://", "rediss://"))


def _stream_key(who: str) -> str:
    return f"rnnlab:streams:{who}"


def _too_many(open_now: int, limit: int) -> TooManyRequests:
    return TooManyRequests(
        "too_many_streams",
        f"this key already has {open_now} open event streams (limit {limit}); close one first",
        {"limit": limit},
        retry_after_seconds=5,
    )


def acquire_event_stream(who: str) -> str:
    """Take one of the key's event-stream slots (across API processes with Redis); 429 when all are
    taken. Returns the stream's token for :func:`refresh_event_stream` and :func:`release_event_stream`."""
    limit = get_settings().max_event_streams_per_key
    token = uuid.uuid4().hex
    client = _stream_redis()
    if client is not None:
        now = time.time()
        try:
            result = int(
                client.eval(
                    _ACQUIRE,
                    1,
                    _stream_key(who),
                    now,
                    now + STREAM_TTL_SECONDS,
                    limit,
                    token,
                    int(STREAM_TTL_SECONDS) + 5,
                )
            )
        except Exception as exc:  # Redis unreachable: the stream opens uncounted (as the rate limit does)
            log.warning("event stream not counted: its store is unreachable (%s)", exc)
            return token
        if result < 0:
            raise _too_many(-result - 1, limit)
        return token
    with _streams_lock:
        open_now = _streams.get(who, 0)
        if open_now >= limit:
            raise _too_many(open_now, limit)
        _streams[who] = open_now + 1
    return token


def refresh_event_stream(who: str, token: str) -> None:
    """Keep an open stream's slot from lapsing (Redis only; a failure is logged, not raised)."""
    client = _stream_redis()
    if client is not None:
        try:
            client.zadd(_stream_key(who), {token: time.time() + STREAM_TTL_SECONDS}, xx=True)
            client.expire(_stream_key(who), int(STREAM_TTL_SECONDS) + 5)
        except Exception as exc:
            log.warning("could not refresh an event-stream slot: %s", exc)


def release_event_stream(who: str, token: str | None = None) -> None:
    client = _stream_redis()
    if client is not None and token is not None:
        try:
            client.zrem(_stream_key(who), token)
        except Exception as exc:  # it lapses after STREAM_TTL_SECONDS
            log.warning("could not release an event-stream slot: %s", exc)
        return
    with _streams_lock:
        left = _streams.get(who, 0) - 1
        if left > 0:
            _streams[who] = left
        else:
            _streams.pop(who, None)


def open_event_streams(who: str) -> int:
    client = _stream_redis()
    if client is not None:
        key = _stream_key(who)
        client.zremrangebyscore(key, "-inf", time.time())
        return int(client.zcard(key))
    with _streams_lock:
        return _streams.get(who, 0)
