"""Where the service's slow work runs: shared fetches, and the image pool.

Single flight in one process: concurrent callers of a key share one
execution (``Flights``). A shared fetch outlives its callers (a client
hanging up must not cancel the others' fetch, nor the cache fill it ends
with), so shutdown waits for what is still running and then cancels the rest
(``Flights.drain``). Across replicas the same job is done by a Redis lock
(``coalesce``). Blocking Pillow work goes to a bounded thread pool
(``ImagePool``), refused rather than queued past its cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .limits import LoadLimits

T = TypeVar("T")
# At shutdown, fetches past the grace are cancelled in rounds, each waited for this long.
_CANCEL_ROUNDS, _CANCEL_WAIT_SECONDS = 3, 0.5


class Flights:
    """The executions running now, by key."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        """Executions still running, including those whose callers have gone."""
        return len(self._running)

    async def join(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """Concurrent callers with the same key share one execution of ``factory``."""
        # shield: a client hanging up must not cancel the others' fetch.
        result: T = await asyncio.shield(self.start(key, factory))
        return result

    def start(self, key: str, factory: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The running execution of ``factory`` for ``key``, started if there is none."""
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(factory())
            self._running[key] = future
            future.add_done_callback(lambda done: self._finish(key, done))
        return future

    def _finish(self, key: str, future: asyncio.Future[Any]) -> None:
        self._running.pop(key, None)
        if not future.cancelled():
            future.exception()  # mark retrieved: every waiter may have gone

    async def drain(self, within: float | None = None) -> int:
        """Wait for executions still running (their callers may have gone) up to
        ``within`` seconds; then cancel the rest. Returns how many were cancelled."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._running:  # one fetch may start another (a photo, its source)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.wait(list(self._running.values()), timeout=left)
        cut = 0
        # A cancelled fetch leaves its shielded inner one; redis-py can swallow a
        # cancellation: a few rounds, each bounded, so shutdown keeps to its grace.
        for _ in range(_CANCEL_ROUNDS):
            pending = list(self._running.values())
            if not pending:
                break
            cut += len(pending)
            for future in pending:
                future.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_WAIT_SECONDS)
        return cut


class ImagePool:
    """The image thread pool, within the load caps (``LoadLimits.image_job``)."""

    def __init__(self, executor: ThreadPoolExecutor, limits: LoadLimits) -> None:
        self._executor = executor
        self._limits = limits

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Blocking Pillow work goes to the bounded image thread pool, if it has room."""
        with self._limits.image_job():
            return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
