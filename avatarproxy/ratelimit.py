"""A token bucket per client address for requests that would reach Graph or render.

A request pays for what it will cost: one token per Graph call and per render
(``RateLimiter.allow(client, cost)``). It gets in while its client holds a
token, and may leave the bucket in debt, which the refill repays before the
next: so a client's Graph calls and renders over time stay within the rate.

With Redis configured the buckets live there (``redis.coordination.RateBuckets``:
one Lua script, atomic, on Redis's clock), so the limit holds across replicas.
Without Redis, or while it fails (as the process's one link to Redis sees it:
``cache.redis_retry_seconds`` after a failure), each process keeps its own
buckets: the limit then applies per replica, which is looser but never an outage.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from .redis.coordination import RateBuckets

# Enough buckets for a large intranet; beyond it the least recently seen go.
MAX_LOCAL_BUCKETS = 100_000


class LocalBuckets:
    """In-process token buckets, bounded in number (least recently used dropped)."""

    def __init__(self, rate: float, burst: int, max_buckets: int = MAX_LOCAL_BUCKETS) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, cost: int = 1) -> bool:
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        taken = tokens >= 1
        self._buckets[client] = (tokens - cost if taken else tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return taken


class RateLimiter:
    """``allow(client, cost)``: may this client cause ``cost`` more Graph calls or
    renders now? Yes while it holds a token; the cost is then taken in full."""

    def __init__(self, rate: float, burst: int, shared: RateBuckets | None = None) -> None:
        self.enabled = rate > 0
        self._rate = rate
        self._burst = burst
        self._local = LocalBuckets(rate, burst) if self.enabled else None
        self._shared = shared

    async def allow(self, client: str, cost: int = 1) -> bool:
        if self._local is None:
            return True
        if self._shared is not None:
            taken = await self._shared.take(client, self._rate, self._burst, cost)
            if taken is not None:
                return taken
        return self._local.take(client, cost)

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()
