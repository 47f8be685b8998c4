"""Exchange Online's limits per mailbox, kept in this process: at most four calls at once,
and a mailbox whose contacts Exchange refuses the app, not asked again for a minute.

Graph hands photo and contact calls to Exchange, which allows an application
4 concurrent requests per mailbox (the Outlook service limits; FACTS.md) and
answers the fifth 429 ``MailboxConcurrency``, without ``x-ms-throttle-scope``.
A page listing a mailbox's contacts asks for dozens of them at once: without a
cap most were throttled, and the pause that followed held the mailbox owner's
own photo too. ``MailboxSlots`` queues every call past the fourth for the same
mailbox. Per process: the workers and replicas of a deployment can still
exceed it together, and their 429s then pause that mailbox only (``throttle``).

Exchange's scoping of an app (RBAC for Applications, an application access
policy) refuses a mailbox outside it with a 403, every time: ``Refusals``
remembers it for ``REFUSAL_SECONDS``, as long as the initials served meanwhile
may be kept, so each request does not ask Graph again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..errors import GraphPermissionDenied

MAILBOX_CONCURRENCY = 4  # Exchange: concurrent requests per app and mailbox
# As long as answers.TRANSIENT_MAX_AGE: the initials a refusal gets are kept that long.
REFUSAL_SECONDS = 60.0
_MAX_REFUSALS = 1024


@dataclass(slots=True)
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0  # calls holding or awaiting it


class MailboxSlots:
    """At most ``limit`` calls at once per mailbox, the others queued in order.

    A mailbox has an entry only while one of its calls holds or awaits a slot,
    so the map never holds more mailboxes than there are calls in flight (which
    the load caps bound), and an idle process holds none.
    """

    def __init__(self, limit: int = MAILBOX_CONCURRENCY) -> None:
        self._limit = limit
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        """Mailboxes with a call holding or awaiting a slot."""
        return len(self._slots)

    @asynccontextmanager
    async def hold(self, mailbox: str) -> AsyncIterator[None]:
        slot = self._slots.get(mailbox)
        if slot is None:
            slot = self._slots[mailbox] = _Slot(asyncio.Semaphore(self._limit))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[mailbox]


class Refusals:
    """Mailboxes whose calls Exchange refused (403), each until ``seconds`` later."""

    def __init__(self, seconds: float = REFUSAL_SECONDS) -> None:
        self._seconds = seconds
        self._refused: dict[str, tuple[float, GraphPermissionDenied]] = {}

    def check(self, mailbox: str) -> None:
        """Raise the refusal ``mailbox`` got, while it is remembered."""
        until, refusal = self._refused.get(mailbox, (0.0, None))
        if refusal is None:
            return
        if time.monotonic() >= until:
            del self._refused[mailbox]
            return
        again = GraphPermissionDenied(str(refusal), refusal.permission)
        again.code, again.detail = refusal.code, refusal.detail
        raise again

    def remember(self, mailbox: str, refusal: GraphPermissionDenied) -> None:
        now = time.monotonic()
        if len(self._refused) >= _MAX_REFUSALS:  # listed mailboxes only, but bounded anyway
            self._refused = {m: r for m, r in self._refused.items() if r[0] > now}
            if len(self._refused) >= _MAX_REFUSALS:
                self._refused.clear()
        self._refused[mailbox] = (now + self._seconds, refusal)
