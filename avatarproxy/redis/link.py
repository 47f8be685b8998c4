"""A process's one link to the shared Redis, and the one view of whether Redis is up.

Every part that keeps state in the shared Redis (the avatar cache's Redis tier,
the download locks, the Graph throttling pauses, the rate-limit buckets) sends
its commands through a ``RedisLink`` sharing one ``RedisHealth``. So they
agree: after a failure to reach Redis seen by any of them, all of them go
without Redis for ``cache.redis_retry_seconds`` (``healthy`` is False
meanwhile), and a Redis outage costs requests nothing and does not pile up
coroutines waiting on timeouts; the next command after that is the probe that
reconnects. An outage is logged at most once a minute, its end once.

A reply error (``NOPERM`` from an ACL that lacks one command, a full Redis
refusing a write) is no outage: Redis answered. It fails that command alone,
is logged at most once a minute, and never switches Redis off for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import MaxConnectionsError, OutOfMemoryError, ResponseError

from .. import metrics
from .commands import discard
from .connection import REDIS_FAILURES, RedisClient, RedisConnection

log = logging.getLogger(__name__)

RedisPipeline = Pipeline | ClusterPipeline
# Adds commands to the pipeline that writes a key (see ``RedisLink.attach_to_write``).
WriteRider = Callable[[RedisPipeline], object]
_WARN_EVERY_SECONDS = 60  # one line a minute is enough to tell an operator Redis is down


class RedisHealth:
    """Whether Redis is up, as every user of the shared Redis in this process sees it."""

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        self.healthy = True
        self.skip_until = 0.0
        self.last_warning = 0.0
        self.writes_refused_for_memory = 0

    def failed(self) -> None:
        self.healthy = False
        self.skip_until = time.monotonic() + self.retry_after

    def should_warn(self) -> bool:
        """At most one warning a minute per process, whoever fails."""
        now = time.monotonic()
        if now - self.last_warning > _WARN_EVERY_SECONDS:
            self.last_warning = now
            return True
        return False


class RedisLink:
    """Redis with short timeouts; errors are logged and read as "no answer" (None).

    A write Redis refuses for lack of memory (maxmemory reached under a
    no-eviction policy) is counted and ignored: the value is simply not kept,
    and Redis is not taken for down.
    """

    def __init__(self, connection: RedisConnection, retry_after: float = 1.0,
                 health: RedisHealth | None = None) -> None:
        """``health``: shared with the other links of the process (else its own)."""
        self.connection = connection
        self.client: RedisClient = connection.client
        self.health = health if health is not None else RedisHealth(retry_after)
        self.refused = False  # the last command got a reply error (see ``call``)
        self._closed = False
        self._busy = 0  # commands in flight; close() lets them finish first
        self._idle = asyncio.Event()
        self._idle.set()
        # key -> what rides along with its next write (a lock released by storing what
        # it guarded); see attach_to_write.
        self._riders: dict[str, WriteRider] = {}

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def writes_refused_for_memory(self) -> int:
        return self.health.writes_refused_for_memory

    @property
    def available(self) -> bool:
        """Whether a command would be sent now (not closed, not skipped after a failure)."""
        # Closed: a late background task must not open a fresh connection that
        # nobody will ever close (redis-py reconnects on the next command).
        health = self.health
        return not self._closed and (health.healthy or time.monotonic() >= health.skip_until)

    async def call(self, name: str, pending: Awaitable[Any]) -> Any:
        """``pending``'s answer; None if Redis failed, is skipped, or refused for memory.

        ``name`` (the command, ``GET``, ``EVAL``...) is for the log line.
        """
        if not self.available:
            discard(pending)
            return None
        self._busy += 1
        self._idle.clear()
        self.refused = False
        try:
            result = await self.connection.run(pending)
        except OutOfMemoryError as exc:
            self.health.writes_refused_for_memory += 1
            metrics.cache_write_refused()
            self._warn(name, exc)
            return None
        except ResponseError as exc:
            # Redis answered: this command is refused (an ACL without it, a script
            # error), not Redis down. Taking it for an outage would switch off every
            # other user of Redis for each refusal.
            self.refused = True
            self._warn(name, exc)
            return None
        except REDIS_FAILURES as exc:
            if _pool_exhausted(exc):
                # Every connection of this pool is busy (a burst of requests): this
                # command goes without Redis, the others still use it. Taken for an
                # outage, it would hand the rate limiter fresh local buckets.
                self.refused = True
                return None
            self.health.failed()
            self._warn(name, exc)
            return None
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()
        if not self.health.healthy:
            log.info("redis is back at %s", self.connection.where())
            self.health.healthy = True
        return result

    def attach_to_write(self, key: str, rider: WriteRider) -> None:
        """Send ``rider``'s commands in the same round trip as the next write of ``key``."""
        self._riders[key] = rider

    def detach_from_write(self, key: str) -> WriteRider | None:
        """What rides along with the next write of ``key``; it is that write's now."""
        return self._riders.pop(key, None)

    def _warn(self, command: str, exc: BaseException) -> None:
        if self.health.should_warn():
            log.warning("redis %s failed, serving without it: %s", command,
                        self.connection.failure(exc))

    async def close(self) -> None:
        """Close the connection once, after the commands in flight (each user may call it)."""
        if self._closed:
            return
        self._closed = True
        # A command cut off by the pool's disconnect would be retried by
        # redis-py on a fresh socket that nobody closes: let them finish.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=2.0)
        await self.connection.aclose()


def _pool_exhausted(exc: BaseException) -> bool:
    """No connection was free: ``RedisConnection.run`` waited for one past the deadline
    (``NoFreeConnection``), or redis-py's pool (a Cluster node's) was full. That
    command goes without Redis and Redis stays up for the others."""
    return isinstance(exc, MaxConnectionsError)
