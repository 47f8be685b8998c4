"""Everyone ``security.blocked`` names, by every name a page may use for them.

An entry is a UPN or an object id, but a page may ask by either, or by a mail
address or an ``smtp:`` alias that the service resolves to an object id. A
request by UPN never learns the object id (nor one by id the UPN), and a
Graph call per request to find out would spend the quota; so each entry is
resolved here instead, at start-up and every ``cache.metadata_ttl_seconds``
(sooner while an entry fails), to the person's object id, UPN, mail and
aliases. An entry Graph does not know stays blocked as written.

Until every entry has resolved once, ``resolved`` is False, and the service
refuses requests that would go through the address lookup: it could not tell
whether the person found is blocked (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from .errors import GraphError, GraphNotFound, GraphPermissionDenied
from .graph.client import GraphClient
from .graph.resources import identity_from_json
from .graph.urls import user_path
from .models import NOBODY, Identity, Subject

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0  # after a failed round, at most this long until the next
_IDENTITY_QUERY = "$select=id,userPrincipalName,mail,proxyAddresses"


class BlockedPeople:
    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = frozenset(e.strip().lower() for e in entries if e.strip())
        self._found: dict[str, frozenset[str]] = {}  # entry -> every name it resolved to
        self._names = self.entries
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, name: object) -> bool:
        return name in self._names

    @property
    def resolved(self) -> bool:
        """Every entry has resolved at least once (an empty list trivially has)."""
        return len(self._found) == len(self.entries)

    async def resolve(self, graph: GraphClient) -> bool:
        """Ask Graph about every entry; True if all answered. An entry that fails
        keeps its last answer: a person's names rarely change."""
        entries = sorted(self.entries)
        answers = await asyncio.gather(*(_names_or_error(graph, e) for e in entries))
        failed = [answer for answer in answers if isinstance(answer, GraphError)]
        for entry, answer in zip(entries, answers, strict=True):
            if not isinstance(answer, GraphError):
                self._found[entry] = answer
        self._names = self.entries.union(*self._found.values())
        self._report(failed)
        return not failed

    async def start(self, graph: GraphClient, every: float, wait: float) -> None:
        """Resolve now, waiting at most ``wait`` seconds (so a replica normally knows
        the list before it is ready), then again every ``every`` seconds."""
        if not self.entries or self._task is not None:
            return
        first = asyncio.Event()
        self._task = asyncio.create_task(self._refresh(graph, every, first))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await first.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh(self, graph: GraphClient, every: float, first: asyncio.Event) -> None:
        while True:
            complete = await self.resolve(graph)
            first.set()
            await asyncio.sleep(every if complete else min(every, RETRY_SECONDS))

    def _report(self, failed: list[GraphError]) -> None:
        # Counts, never the entries: they are people's names (logging.log_upn).
        if failed and not self._failing:
            denied = [e.permission for e in failed if isinstance(e, GraphPermissionDenied)]
            log.warning("security.blocked: %d of %d entries could not be resolved (%s)%s%s",
                        len(failed), len(self.entries), failed[0],
                        f": grant the application permission {denied[0]}" if denied else "",
                        "" if self.resolved else
                        "; every person gets initials until they are")
        elif self._failing and not failed:
            log.warning("security.blocked: every entry resolved again")
        self._failing = bool(failed)


async def _names_or_error(graph: GraphClient, entry: str) -> frozenset[str] | GraphError:
    """The entry and every name of the user it denotes (the entry alone for nobody)."""
    try:
        person = await _identity(graph, Subject(entry))
        if not person.object_id and not Subject(entry).is_object_id:
            # Perhaps the person's address rather than their UPN.
            found = await graph.find_user_by_mail(entry)
            if found.object_id:
                person = await _identity(graph, Subject(found.object_id))
    except GraphError as exc:
        return exc
    return frozenset({entry, *person.names})


async def _identity(graph: GraphClient, subject: Subject) -> Identity:
    try:
        data = await graph.get_json("user", subject, user_path(subject), _IDENTITY_QUERY)
    except GraphNotFound:
        return NOBODY
    return identity_from_json(data)
