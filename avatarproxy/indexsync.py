"""Keeps the hash index current: users delta rounds on a schedule, one syncer at a time.

Every ``directory.sync_interval_seconds`` (and at start-up) each process looks at
the index's sync state. If a round ended less than an interval ago, there is
nothing to do; else it takes the store's lease (with Redis, one replica at a
time syncs the shared index; in memory, each process its own) and runs a round
from the stored delta link. Without a link, or with one Graph has forgotten
(``DeltaExpired``), the round is a full one: every user is written again and,
at its end, users the index holds but Graph no longer listed are removed. An
index made under another ``directory.index_key`` is dropped first.

Pages are written as they arrive and the link is stored only when a round is
complete, so a round cut short (a restart, Graph down) is simply repeated: the
changes it re-applies are idempotent. A throttled page waits for its
``Retry-After`` and is asked again, keeping the round's place. Log lines give
counts, never people.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GraphError, GraphPermissionDenied, GraphUnavailable
from .graph.client import GraphClient
from .graph.usersdelta import DeltaExpired, DeltaPage, delta_page
from .hashindex import Entry, HashIndex, IndexUnavailable, SyncState

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # renewed after every page and during waits
RETRY_SECONDS = 30.0  # after a failed round (or while another replica's first is running)
_PAGE_ATTEMPTS = 8  # a throttled or failing page is asked again this often within a round
_LONGEST_WAIT = 60.0
_REMOVE_BATCH = 500


class LeaseLost(Exception):
    """Another syncer holds the index now (ours expired): stop this round."""


@dataclass(slots=True)
class RoundReport:
    full: bool
    pages: int = 0
    users: int = 0
    removed: int = 0


class IndexSync:
    """Runs users delta rounds into ``index`` every ``interval`` seconds."""

    def __init__(self, graph: GraphClient, index: HashIndex, interval: float) -> None:
        self._graph = graph
        self._index = index
        self._store = index.store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.rounds = 0  # rounds this process completed

    async def start(self, wait: float) -> None:
        """Sync now, waiting at most ``wait`` seconds for it (a first full round of a
        large tenant takes minutes: start-up goes on), then on schedule."""
        if self._task is not None:
            return
        first = asyncio.Event()
        self._task = asyncio.create_task(self._run(first))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await first.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, first: asyncio.Event) -> None:
        while True:
            done = await self.sync_once()
            first.set()
            current = done and self._index.ready
            await asyncio.sleep(self._interval if current else min(self._interval,
                                                                   RETRY_SECONDS))

    async def sync_once(self) -> bool:
        """One round if one is due and the lease is ours; False if it failed."""
        try:
            if await self._fresh():
                return True
            if not await self._store.claim(LEASE_SECONDS):
                return True  # another replica is syncing
            try:
                report = await self._locked_round()
            finally:
                await self._store.release()
        except (GraphError, IndexUnavailable, LeaseLost) as exc:
            self._report_failure(exc)
            return False
        if report is not None:
            self.rounds += 1
            self._report_success(report)
        return True

    async def _fresh(self) -> bool:
        """Whether the index is current (a round ended within the interval); notes
        whether it is ready at all."""
        state = await self._store.state()
        mine = state is not None and state.key_id == self._index.keys.fingerprint
        self._index.ready = mine and state is not None and bool(state.link)
        return mine and state is not None and state.fresh(self._interval)

    async def _locked_round(self) -> RoundReport | None:
        if await self._fresh():  # another replica finished one while we waited
            return None
        state = await self._store.state()
        fingerprint = self._index.keys.fingerprint
        if state is not None and state.key_id != fingerprint:
            log.warning("directory: the index was made with another directory.index_key: "
                        "rebuilding it with a full sync")
            await self._store.clear()
            state = None
        if state is None:
            await self._store.save_state(SyncState("", fingerprint))
        link = state.link if state is not None and state.link else None
        try:
            return await self._round(link)
        except DeltaExpired as exc:
            log.warning("directory: %s: running a full sync", exc)
            return await self._round(None)

    async def _round(self, link: str | None) -> RoundReport:
        report = RoundReport(full=link is None)
        seen: set[str] = set()
        while True:
            page = await self._page(link)
            entries = [Entry(user.object_id, self._index.keys.of_addresses(user.addresses))
                       for user in page.users]
            await self._store.apply(entries)
            report.pages += 1
            report.users += len(entries)
            seen.update(entry.object_id for entry in entries)
            if not await self._store.renew(LEASE_SECONDS):
                raise LeaseLost("directory: the sync lease expired during a round")
            if page.next_link is not None:
                link = page.next_link
                continue
            if report.full:
                report.removed = await self._remove_all_but(seen)
            assert page.delta_link is not None
            await self._store.save_state(SyncState(page.delta_link,
                                                   self._index.keys.fingerprint, time.time()))
            self._index.ready = True
            return report

    async def _page(self, link: str | None) -> DeltaPage:
        """A page, asked again while Graph throttles or fails (its Retry-After honoured),
        keeping the round's place."""
        for attempt in range(_PAGE_ATTEMPTS):
            try:
                return await delta_page(self._graph, link)
            except GraphUnavailable as exc:
                if attempt == _PAGE_ATTEMPTS - 1:
                    raise
                await self._hold(min(_LONGEST_WAIT, exc.retry_after or 2.0 ** attempt))
        raise AssertionError("unreachable")

    async def _hold(self, seconds: float) -> None:
        """Wait, keeping the lease."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, LEASE_SECONDS / 4))
            if not await self._store.renew(LEASE_SECONDS):
                raise LeaseLost("directory: the sync lease expired while Graph throttled")

    async def _remove_all_but(self, seen: set[str]) -> int:
        """After a full round: users the index holds that Graph no longer has."""
        gone = sorted(await self._store.owners() - seen)
        for start in range(0, len(gone), _REMOVE_BATCH):
            await self._store.apply(_removals(gone[start:start + _REMOVE_BATCH]))
        return len(gone)

    def _report_success(self, report: RoundReport) -> None:
        if self._failing:
            log.warning("directory: the index syncs again")
        self._failing = False
        level = logging.INFO if report.full or report.users else logging.DEBUG
        log.log(level, "directory: %s sync: %d users in %d pages, %d removed",
                "full" if report.full else "delta", report.users, report.pages, report.removed)

    def _report_failure(self, exc: Exception) -> None:
        if self._failing:
            return  # once per outage, like the blocked list
        self._failing = True
        hint = (f": grant the application permission {exc.permission}"
                if isinstance(exc, GraphPermissionDenied) else "")
        log.warning("directory: index sync failed (%s)%s; hashes it lacks get the default "
                    "image until it succeeds", exc, hint)


def _removals(object_ids: Sequence[str]) -> list[Entry]:
    return [Entry(object_id, frozenset()) for object_id in object_ids]
