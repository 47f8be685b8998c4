"""What the replicas share through Redis besides cached avatars, and its key names.

- **Download locks** (used by ``coalesce``): at most one replica fetches a given
  thing from Graph at a time.
- **Throttling pauses** (used by ``throttle``): a ``Retry-After`` from Graph holds
  off every replica, not only the one that was told.
- **Rate-limit buckets** (used by ``ratelimit``): a client's token bucket, the same
  whichever replica it reaches.

All three share the process's one ``RedisHealth`` with the avatar cache's Redis
tier (locks and pauses over the cache's ``RedisLink``, the buckets over
connections of their own), so they agree on whether Redis is up; each answers
"no Redis" (None) rather than fail, and its user goes on without it.

Keys (``SharedKeys``): a lock is named after the key it guards (``...lock:`` in
place of the cache's ``...``), so it carries the same hash tag and shares its
Cluster slot: the lock and a look at that key go in one pipeline. A pause is
``...pause:{<scope>}``, a bucket ``<cache.key_prefix>rl:<client>``. Every
command touches one key, or keys of one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import connection
from .link import RedisHealth, RedisLink, RedisPipeline
from .settings import RedisSettings

# Delete a lock only if we still hold it: a lock that expired and was taken
# by another replica must not be released by the late first holder.
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")
# Extend a lock only if we still hold it (SET, not PEXPIRE: the ACL allows SET).
_EXTEND = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
           "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1 else return 0 end")

# Replicas throttled at about the same time each share their pause: a shorter
# one arriving second must not cut short the longer one already stored.
_KEEP_LATER = ("local stored = tonumber(redis.call('get', KEYS[1]) or '') "
               "if stored and stored >= tonumber(ARGV[1]) then return 0 end "
               "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1")

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns 1 if admitted.
# TIME is Redis's clock: replicas with skewed clocks still agree.
_TAKE = """
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


@dataclass(frozen=True, slots=True)
class SharedKeys:
    """Where the shared state lives: ``cache.key_prefix``, and for locks and pauses
    the cache's schema version (``cache.SCHEMA_VERSION``) as well, as they always
    were: replicas of one version keep finding each other's locks and pauses."""

    key_prefix: str
    schema: str

    @property
    def _namespace(self) -> str:
        return f"{self.key_prefix}{self.schema}:"

    def lock(self, guarded: str) -> str:
        """The download lock of the cache key ``guarded`` (same hash tag, same slot)."""
        return f"{self._namespace}lock:{guarded.removeprefix(self._namespace)}"

    def pause(self, scope: str) -> str:
        """Where a Graph throttling pause of ``scope`` is shared."""
        return f"{self._namespace}pause:{{{scope}}}"

    def bucket(self, client: str) -> str:
        """A client address's rate-limit bucket."""
        return f"{self.key_prefix}rl:{client}"


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class DownloadLocks:
    """Short locks named after the cache key whose fetch they guard, each with a
    random token so that only its holder releases or extends it."""

    def __init__(self, link: RedisLink, keys: SharedKeys) -> None:
        self._link = link
        self._keys = keys

    async def try_lock(self, guarded: str, token: str,
                       ttl_seconds: float) -> tuple[bool, bool] | None:
        """(locked by us, ``guarded`` is stored); None: Redis unavailable or full.

        One round trip: the lock is asked for and the key it guards looked at together.
        """
        if not self._link.available:
            return None
        pipe = self._link.client.pipeline(transaction=False)
        pipe.set(self._keys.lock(guarded), token, nx=True, px=_milliseconds(ttl_seconds))
        pipe.exists(guarded)
        replies = await self._link.call("SET NX", pipe.execute())
        if replies is None:
            return None
        return bool(replies[0]), bool(replies[1])

    async def extend(self, guarded: str, token: str, ttl_seconds: float) -> bool | None:
        """Give our lock ``ttl_seconds`` more; False if it is no longer ours, None if
        Redis did not answer (it may still be ours)."""
        answer = await self._link.call("EVAL", self._link.client.eval(
            _EXTEND, 1, self._keys.lock(guarded), token, _milliseconds(ttl_seconds)))
        return None if answer is None else bool(answer)

    def release_on_write(self, guarded: str, token: str) -> None:
        """Release our lock in the same round trip as the next write of ``guarded``
        (Redis runs a pipeline's commands in order: the lock goes once the value is there)."""
        lock = self._keys.lock(guarded)

        def release(pipe: RedisPipeline) -> None:
            pipe.eval(_RELEASE, 1, lock, token)

        self._link.attach_to_write(guarded, release)

    async def unlock(self, guarded: str, token: str) -> None:
        """Release our lock, unless the write of ``guarded`` already did."""
        if self._link.detach_from_write(guarded) is None:
            return
        await self._link.call("EVAL", self._link.client.eval(
            _RELEASE, 1, self._keys.lock(guarded), token))

    async def held(self, guarded: str) -> bool:
        """Whether someone holds the lock of ``guarded`` (False if Redis does not answer)."""
        return bool(await self._link.call("EXISTS", self._link.client.exists(
            self._keys.lock(guarded))))


class ThrottlePauses:
    """Until when Graph calls of a scope are paused, as the replicas tell each other
    (wall-clock times: each replica compares them with its own clock)."""

    def __init__(self, link: RedisLink, keys: SharedKeys) -> None:
        self._link = link
        self._keys = keys

    async def keep_later(self, scope: str, until: float, ttl_seconds: float) -> None:
        """Store ``until`` for ``scope`` unless a later end is stored (atomic)."""
        await self._link.call("EVAL", self._link.client.eval(
            _KEEP_LATER, 1, self._keys.pause(scope), repr(until), _milliseconds(ttl_seconds)))

    async def latest(self, scopes: list[str]) -> float:
        """The latest end stored for any of ``scopes``; 0.0 if none (or no Redis).

        One round trip: a pipeline, not MGET, since the keys may be in different slots.
        """
        if not self._link.available:
            return 0.0
        pipe = self._link.client.pipeline(transaction=False)
        for scope in scopes:
            pipe.get(self._keys.pause(scope))
        values = await self._link.call("GET", pipe.execute()) or []
        return max((_float(value) for value in values), default=0.0)


class RateBuckets:
    """Token buckets in Redis, updated by one Lua script: atomic, on Redis's clock."""

    def __init__(self, link: RedisLink, keys: SharedKeys) -> None:
        self._link = link
        self._keys = keys
        # EVALSHA, loading the script again if Redis restarted and forgot it.
        self._take = link.client.register_script(_TAKE)

    async def take(self, client: str, rate: float, burst: int, cost: int) -> bool | None:
        """Whether ``client``'s bucket held a token (``cost`` is then taken in full);
        None if Redis did not answer: the caller limits on its own."""
        taken = await self._link.call("EVALSHA", self._take(
            keys=[self._keys.bucket(client)], args=[repr(rate), str(burst), str(cost)]))
        return None if taken is None else bool(taken)

    async def close(self) -> None:
        """Close the rate limiter's own connections."""
        await self._link.close()


def _float(raw: object) -> float:
    try:
        return float(raw) if isinstance(raw, (bytes, str)) else 0.0
    except ValueError:
        return 0.0


@dataclass(frozen=True, slots=True)
class Coordination:
    """The shared state of one deployment, over a process's one link to Redis.

    Without Redis every part is None: each process then goes on its own.
    """

    link: RedisLink | None = None
    locks: DownloadLocks | None = None
    pauses: ThrottlePauses | None = None
    buckets: RateBuckets | None = None

    @classmethod
    def connect(cls, cache: RedisSettings, schema: str) -> Coordination:
        """The shared state as ``cache`` configures it (``schema``: ``cache.SCHEMA_VERSION``).
        No I/O yet: connections open on first use."""
        if not connection.enabled(cache):
            return cls()
        health = RedisHealth(cache.redis_retry_seconds)
        link = RedisLink(connection.connect(cache), health=health)
        keys = SharedKeys(cache.key_prefix, schema)
        # The rate limiter gets its own connections (one health): a request's
        # rate check must not queue behind the cache's commands for a connection.
        buckets = RateBuckets(RedisLink(connection.connect(cache), health=health), keys)
        return cls(link, DownloadLocks(link, keys), ThrottlePauses(link, keys), buckets)
