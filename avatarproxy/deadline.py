"""A deadline that does not count the event loop's own lag against the work it bounds.

``asyncio.timeout`` measures wall-clock time. When the loop is saturated
(CPU-bound callbacks, a burst of requests) the timer's callback runs late, in
the same turn as the read that would have finished the work or before it
(uvloop runs timers first): with a reply already waiting in the socket, it
cancels a command Redis answered in time, and the caller takes Redis for down. So the timer here
checks how late it ran; late by more than a tenth of the deadline, it gives
the work that lag again (the reply that waited behind it is read first), once and
at most one more deadline, so that a dead peer under a loop that never catches up
is still given up on after at most twice the deadline plus one turn of the loop.
On time, it cancels as ``asyncio.timeout`` does.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

_TOLERANCE = 0.1  # of the deadline: a timer this late is the loop's lag, not the peer's


class deadline:  # used like asyncio.timeout
    """``async with deadline(seconds):`` raises TimeoutError after ``seconds`` of
    the loop's time; a cancellation from outside passes through as it is."""

    __slots__ = ("_graced", "_handle", "_loop", "_seconds", "_timeout", "_when")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def __aenter__(self) -> None:
        # asyncio's Timeout does the cancelling and turns it into TimeoutError;
        # only when it fires is ours to decide.
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._loop = loop = asyncio.get_running_loop()
        self._when = loop.time() + self._seconds
        self._graced = False
        self._handle = loop.call_at(self._when, self._expire)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._handle.cancel()
        await self._timeout.__aexit__(kind, exc, traceback)

    def _expire(self) -> None:
        now = self._loop.time()
        late = now - self._when
        if late > self._seconds * _TOLERANCE and not self._graced:
            self._graced = True  # once: a loop that never catches up ends the wait too
            self._when = now + min(late, self._seconds)
            self._handle = self._loop.call_at(self._when, self._expire)
        else:
            self._timeout.reschedule(now)  # cancels the task at once
