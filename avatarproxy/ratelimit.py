"""A token bucket per client address for requests that would reach Graph or render.

A request pays for what it will cost: one token per Graph call and per render
(``RateLimiter.allow(client, cost)``). It gets in while its client holds a
token, and may leave the bucket in debt, which the refill repays before the
next: so a client's Graph calls and renders over time stay within the rate.

With Redis configured the buckets live there, updated by one Lua script (atomic,
on Redis's clock), so the limit holds across replicas. Without Redis, or while
it fails, each process keeps its own buckets: the limit then applies per
replica, which is looser but never an outage.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from .redis.connection import REDIS_FAILURES, RedisConnection, command

log = logging.getLogger(__name__)

# Enough buckets for a large intranet; beyond it the least recently seen go.
MAX_LOCAL_BUCKETS = 100_000
# After a Redis failure, limit locally for this long instead of waiting for a
# timeout on every miss.
REDIS_RETRY_SECONDS = 5.0

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns 1 if admitted.
# TIME is Redis's clock: replicas with skewed clocks still agree.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - cost
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return taken
"""


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

    def __init__(self, rate: float, burst: int, redis: RedisConnection | None = None,
                 key_prefix: str = "avatarproxy:") -> None:
        self.enabled = rate > 0
        self._rate = rate
        self._burst = burst
        self._prefix = f"{key_prefix}rl:"
        self._local = LocalBuckets(rate, burst) if self.enabled else None
        self._redis = redis if self.enabled else None
        if self._redis is not None:
            # EVALSHA, loading the script again if Redis restarted and forgot it.
            self._take = self._redis.client.register_script(_SCRIPT)
        self._last_error_log = 0.0
        self._redis_retry_at = 0.0

    async def allow(self, client: str, cost: int = 1) -> bool:
        if self._local is None:
            return True
        if self._redis is not None and time.monotonic() >= self._redis_retry_at:
            pending = self._take(keys=[self._prefix + client],
                                 args=[repr(self._rate), str(self._burst), str(cost)])
            try:
                taken = await command(pending)
            except REDIS_FAILURES as exc:
                self._redis_retry_at = time.monotonic() + REDIS_RETRY_SECONDS
                self._log_error(self._redis.failure(exc))
            else:
                return bool(taken)
        return self._local.take(client, cost)

    def _log_error(self, failure: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            log.warning("redis rate limit failed, limiting per process: %s", failure)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
