"""At most one replica fetches a given thing from Graph at a time.

Inside a process, ``AvatarService`` already shares one fetch among concurrent
requests. Across replicas, the first to miss takes a short Redis lock
(``SET NX PX`` with a random token) and downloads; the others poll the shared
image key for a bounded time. If the holder dies, its lock expires and a
waiter takes it over; if the wait runs out, a waiter fetches for itself:
an avatar late is worse than a second Graph call. The lock is released with
a compare-and-delete, so a holder whose lock expired never frees another's.
Without Redis (or with Redis down) every replica simply fetches.

A fetch can outlast any fixed lock time (a Graph timeout, retries, their
backoff, a slow token), so the holder renews its lock while it works: the lock
time only bounds how long a holder that died keeps the others waiting.

A miss waits for each round trip to Redis, so the lock is asked for together
with a look at the image key, and released together with the image's write.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .cache import RedisTier

_POLL_SECONDS = 0.02
T = TypeVar("T")


class ReplicaCoalescer:
    def __init__(self, redis: RedisTier | None, wait_seconds: float, lock_seconds: float,
                 guarded_key: Callable[[str], str] | None = None) -> None:
        self._redis = redis
        self._wait = wait_seconds
        # How long a dead holder blocks the others; a live one renews its lock.
        self._lock_seconds = lock_seconds
        # The key a lock key guards; without it ``lookup`` runs after every lock.
        self._guarded_key = guarded_key

    async def run(self, lock_key: str, fetch: Callable[[], Awaitable[T]],
                  lookup: Callable[[], Awaitable[T | None]]) -> T:
        """``fetch`` under the lock, or the holder's result found by ``lookup``."""
        # Another flight may have finished between our miss and now.
        if self._redis is None:
            return await lookup() or await fetch()
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self._wait
        guarded = self._guarded_key(lock_key) if self._guarded_key else None
        while True:
            attempt = await self._redis.try_lock(lock_key, token, self._lock_seconds, guarded)
            if attempt is None:
                return await lookup() or await fetch()  # Redis unavailable: no lock to take
            locked, stored = attempt
            if locked:
                if guarded is not None:
                    # Storing what the lock guards releases it, in the same round trip.
                    self._redis.release_on_write(guarded, lock_key, token)
                renewal = asyncio.create_task(self._renew(lock_key, token))
                try:
                    # Only if a holder stored it between our miss and our lock: usually
                    # not, and the miss costs one round trip to Redis, not two.
                    return (await lookup() if stored else None) or await fetch()
                finally:
                    renewal.cancel()
                    await self._redis.unlock(lock_key, token, guarded)
            if time.monotonic() >= deadline:
                return await fetch()  # waited long enough
            found = await self._await_holder(lock_key, lookup, deadline)
            if found is not None:
                return found

    async def _renew(self, lock_key: str, token: str) -> None:
        """Keep our lock while the fetch runs (cancelled when it ends); most fetches
        end before the first renewal. No longer ours (it expired): stop. Redis not
        answering: try again at the next tick, the lock may well still be ours."""
        assert self._redis is not None
        while True:
            await asyncio.sleep(self._lock_seconds / 3)
            if await self._redis.extend_lock(lock_key, token, self._lock_seconds) is False:
                return

    async def _await_holder(self, lock_key: str, lookup: Callable[[], Awaitable[T | None]],
                            deadline: float) -> T | None:
        """The holder's result; None once its lock is gone (it failed or died) or time is up."""
        assert self._redis is not None
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            found = await lookup()
            if found is not None:
                return found
            if not await self._redis.exists(lock_key):
                return await lookup()  # it may have stored the image just before releasing
        return None
