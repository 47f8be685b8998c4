"""Time as the event loop lives it: its own lag is not counted against the work waiting.

When the loop is saturated (CPU-bound callbacks, a burst of requests) timers run
late, and wall-clock time passes without the waiting work running at all.

``deadline`` bounds one piece of work (a Redis command) like ``asyncio.timeout``,
but its timer checks how late it ran: late by more than a tenth of the deadline,
it gives the work that lag again, once and at most one more deadline (the reply
that waited behind it is read first; uvloop runs timers before reading sockets).
So a command Redis answered in time is not cut off by the loop's lag, and a dead
peer under a loop that never catches up is still given up on after at most twice
the deadline plus six turns of the loop (a turn: running once what is ready): the
timer runs up to two turns late, its grace too, then the cancel and the unwinding
take one each. A connection being opened pauses it (``paused``): opening one has
budgets of its own. A task started inside inherits the running deadline; once it
has ended or fired, pausing it does nothing.

``Stopwatch`` counts a longer wait (a replica waiting for another's download) in
the loop's own time, on one clock per loop: a tick every ``_TICK_SECONDS`` adds
the time since the last one, but no more than two ticks' worth (a later tick
waited behind other work), so a stall of the loop counts as 40 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType

_TOLERANCE = 0.1  # of the deadline: a timer this late is the loop's lag, not the peer's
_TICK_SECONDS = 0.02
_running: ContextVar[deadline | None] = ContextVar("deadline", default=None)


class deadline:  # used like asyncio.timeout
    """``async with deadline(seconds):`` raises TimeoutError after ``seconds`` of
    the loop's time; a cancellation from outside passes through as it is."""

    __slots__ = ("_graced", "_handle", "_left", "_loop", "_over", "_pauses", "_seconds",
                 "_timeout", "_token", "_when")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def __aenter__(self) -> None:
        # asyncio's Timeout does the cancelling and turns it into TimeoutError;
        # only when it fires is ours to decide.
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._loop = loop = asyncio.get_running_loop()
        self._when = loop.time() + self._seconds
        self._graced = self._over = False
        self._pauses = 0
        self._handle = loop.call_at(self._when, self._expire)
        self._token = _running.set(self)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        _running.reset(self._token)
        self._over = True  # a task started inside still sees it: _pause, _resume
        self._handle.cancel()
        await self._timeout.__aexit__(kind, exc, traceback)

    def _expire(self) -> None:
        if self._over:
            return
        now = self._loop.time()
        late = now - self._when
        if late > self._seconds * _TOLERANCE and not self._graced:
            self._graced = True  # once: a loop that never catches up ends the wait too
            self._when = now + min(late, self._seconds)
            self._handle = self._loop.call_at(self._when, self._expire)
        else:
            self._over = True
            self._timeout.reschedule(now)  # the task is cancelled on the next turn

    def _pause(self) -> None:
        if self._over:
            return
        self._pauses += 1
        if self._pauses == 1:
            self._handle.cancel()
            self._left = self._when - self._loop.time()

    def _resume(self) -> None:
        if self._over:
            return
        self._pauses -= 1
        if not self._pauses:
            self._when = self._loop.time() + max(self._left, 0.0)
            self._handle = self._loop.call_at(self._when, self._expire)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The task's running ``deadline`` (if any) stopped while the block runs."""
    running = _running.get()
    if running is None:
        yield
        return
    running._pause()
    try:
        yield
    finally:
        running._resume()


class _LoopClock:
    """The loop's own time since it was made; it ticks only while a stopwatch runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = 0.0
        self.elapsed = 0.0
        self.running = 0  # stopwatches
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.running += 1
        if self._handle is None:
            self._last = self._loop.time()
            self._handle = self._loop.call_later(_TICK_SECONDS, self._tick)

    def stop(self) -> None:
        self.running -= 1
        if not self.running and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self._loop.time()
        self.elapsed += min(now - self._last, 2 * _TICK_SECONDS)
        self._last = now
        self._handle = self._loop.call_later(_TICK_SECONDS, self._tick)


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClock] = (
    weakref.WeakKeyDictionary())


class Stopwatch:
    """Seconds of the running loop's own time since it was made (``elapsed``), until
    ``stop``; every stopwatch of a loop reads the loop's one clock."""

    __slots__ = ("_clock", "_started", "_stopped")

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        clock = _clocks.get(loop)
        if clock is None:
            clock = _clocks[loop] = _LoopClock(loop)
        clock.start()
        self._clock = clock
        self._started = clock.elapsed
        self._stopped: float | None = None

    @property
    def elapsed(self) -> float:
        return (self._clock.elapsed if self._stopped is None else self._stopped) - self._started

    def stop(self) -> None:
        if self._stopped is None:
            self._stopped = self._clock.elapsed
            self._clock.stop()
