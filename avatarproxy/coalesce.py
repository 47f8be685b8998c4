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

The wait is counted in the loop's own time (``deadline.Stopwatch``): when this
process's event loop lags (its cores saturated, a long callback), the time it
spends unable to run is not time spent waiting for the holder, and a waiter
whose loop stalled past its wait would otherwise fetch a second time a photo
the holder is about to store.

This module is the policy (wait, take over, renew); the locks' commands and
key names are ``redis.coordination.DownloadLocks``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .deadline import Stopwatch
from .redis.coordination import DownloadLocks

_POLL_SECONDS = 0.02
T = TypeVar("T")


class ReplicaCoalescer:
    def __init__(self, locks: DownloadLocks | None, wait_seconds: float,
                 lock_seconds: float) -> None:
        self._locks = locks
        self._wait = wait_seconds
        # How long a dead holder blocks the others; a live one renews its lock.
        self._lock_seconds = lock_seconds

    async def run(self, key: str, fetch: Callable[[], Awaitable[T]],
                  lookup: Callable[[], Awaitable[T | None]]) -> T:
        """``fetch`` (which stores its result at cache key ``key``) under the lock of
        ``key``, or the holder's result found by ``lookup``."""
        # Another flight may have finished between our miss and now.
        if self._locks is None:
            return await lookup() or await fetch()
        token = secrets.token_hex(16)
        waited = Stopwatch()
        try:
            while True:
                attempt = await self._locks.try_lock(key, token, self._lock_seconds)
                if attempt is None:
                    return await lookup() or await fetch()  # Redis unavailable: no lock
                locked, stored = attempt
                if locked:
                    waited.stop()
                    return await self._fetch_locked(key, token, stored, fetch, lookup)
                if waited.elapsed >= self._wait:
                    return await fetch()  # waited long enough
                found = await self._await_holder(key, lookup, waited)
                if found is not None:
                    return found
        finally:
            waited.stop()

    async def _fetch_locked(self, key: str, token: str, stored: bool,
                            fetch: Callable[[], Awaitable[T]],
                            lookup: Callable[[], Awaitable[T | None]]) -> T:
        """``fetch`` under our lock, renewed meanwhile; ``stored``: the key was there."""
        assert self._locks is not None
        # Storing what the lock guards releases it, in the same round trip.
        self._locks.release_on_write(key, token)
        renewal = asyncio.create_task(self._renew(key, token))
        try:
            # Only if a holder stored it between our miss and our lock: usually
            # not, and the miss costs one round trip to Redis, not two.
            return (await lookup() if stored else None) or await fetch()
        finally:
            renewal.cancel()
            await self._locks.unlock(key, token)

    async def _renew(self, key: str, token: str) -> None:
        """Keep our lock while the fetch runs (cancelled when it ends); most fetches
        end before the first renewal. No longer ours (it expired): stop. Redis not
        answering: try again at the next tick, the lock may well still be ours."""
        assert self._locks is not None
        while True:
            await asyncio.sleep(self._lock_seconds / 3)
            if await self._locks.extend(key, token, self._lock_seconds) is False:
                return

    async def _await_holder(self, key: str, lookup: Callable[[], Awaitable[T | None]],
                            waited: Stopwatch) -> T | None:
        """The holder's result; None once its lock is gone (it failed or died) or time is up."""
        assert self._locks is not None
        while waited.elapsed < self._wait:
            await asyncio.sleep(_POLL_SECONDS)
            found = await lookup()
            if found is not None:
                return found
            if not await self._locks.held(key):
                return await lookup()  # it may have stored the image just before releasing
        return None
