"""Keeps the hash index current: users delta rounds on a schedule, one syncer at a time.

Every ``directory.sync_interval_seconds`` (and at start-up) each process looks at
the index's sync state. If a round ended less than an interval ago, there is
nothing to do; else it takes the store's lease (with Redis, one replica at a
time syncs the shared index; in memory, each process its own) and runs a round
from the stored delta link. Without a link, or with one Graph has forgotten
(``DeltaExpired``), the round is a full one: every user is written again and,
at its end, users the index holds but Graph no longer listed are removed. Once
every ``FULL_ROUND_SECONDS`` a full round runs anyway, repairing whatever a
store may have lost (a key Redis evicted). An index made under another
``directory.index_key`` is dropped first (in memory; in Redis each key has its
own, and another key's is dropped once no round has kept it for
``ABANDONED_INDEX_SECONDS``).

Pages are written as they arrive and the link is stored only when a round is
complete, so a round cut short (a restart, Graph down) is simply repeated: the
changes it re-applies are idempotent. A throttled page waits for its
``Retry-After`` and is asked again, keeping the round's place; a failed round
is tried again within ``RETRY_SECONDS``, except one Graph answered in a way we
will not follow (``DeltaRefused``), which waits for the schedule. Nothing stops
the schedule: an unexpected error is logged and the next round comes. The end
of the index's last round is exported (``metrics.hash_index_synced``). Log
lines give counts, never people.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from . import metrics
from .errors import GraphError, GraphPermissionDenied, GraphUnavailable
from .graph.client import GraphClient
from .graph.usersdelta import DeltaExpired, DeltaPage, DeltaRefused, delta_page
from .hashindex import Entry, HashIndex, IndexUnavailable, SyncState

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # renewed after every page and during waits
RETRY_SECONDS = 30.0  # after a failed round (or while another replica's first is running)
FULL_ROUND_SECONDS = 7 * 86400.0  # a full round at least this often, whatever the link
# Another key's index in Redis that no round has kept this long: no replica uses it.
ABANDONED_INDEX_SECONDS = 86400.0
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
    dropped: int = 0  # indexes of other keys deleted (Redis)


class IndexSync:
    """Runs users delta rounds into ``index`` every ``interval`` seconds."""

    def __init__(self, graph: GraphClient, index: HashIndex, interval: float) -> None:
        self._graph = graph
        self._index = index
        self._store = index.store
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._refused = False  # the last round failed on an answer we will not follow
        self._crashing = False  # rounds end in an unexpected error (logged once)
        self._closing = False
        self.rounds = 0  # rounds this process completed

    async def start(self, wait: float) -> None:
        """Sync now, waiting at most ``wait`` seconds for it (a first full round of a
        large tenant takes minutes: start-up goes on), then on schedule."""
        if self._task is not None:
            return
        metrics.hash_index_synced(0.0)  # never, until a round has completed
        first = asyncio.Event()
        self._task = asyncio.create_task(self._run(first))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await first.wait()

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        # redis-py (and Python 3.11's wait_for) can swallow a cancellation that lands as
        # a command completes: _closing ends the loop, a repeated cancel the wait.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: _run ends only by cancellation or _closing

    async def _run(self, first: asyncio.Event) -> None:
        while not self._closing:
            try:
                done = await self.sync_once()
            except Exception as exc:  # a bug of ours: logged once, and the schedule goes on
                if not self._crashing:
                    log.error("directory: index sync failed unexpectedly; trying again "
                              "within %d s", min(self._interval, RETRY_SECONDS), exc_info=exc)
                self._crashing, done = True, False
            first.set()
            current = done and self._index.ready
            await asyncio.sleep(self._interval if current or self._refused
                                else min(self._interval, RETRY_SECONDS))

    async def sync_once(self) -> bool:
        """One round if one is due and the lease is ours; False if it failed."""
        self._refused = False
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
        if state is None or state.key_id != self._index.keys.fingerprint:
            self._index.ready = False
            return False
        self._index.ready = bool(state.link)
        if state.link:  # whichever replica ran it
            metrics.hash_index_synced(state.finished_at)
        return state.fresh(self._interval)

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
            state = SyncState("", fingerprint)
            await self._store.save_state(state)
        link = state.link or None
        if link is not None and time.time() - state.full_at > FULL_ROUND_SECONDS:
            log.info("directory: no full sync for %d days: running one",
                     FULL_ROUND_SECONDS // 86400)
            link = None
        try:
            return await self._round(link, state.full_at)
        except DeltaExpired as exc:
            log.warning("directory: %s: running a full sync", exc)
            return await self._round(None, state.full_at)

    async def _round(self, link: str | None, full_at: float) -> RoundReport:
        """Pages from ``link`` (None: a full round) to the next delta link; ``full_at``:
        when the last full round ended, kept unless this one is full."""
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
            now = time.time()
            await self._store.save_state(SyncState(page.delta_link,
                                                   self._index.keys.fingerprint, now,
                                                   now if report.full else full_at))
            self._index.ready = True
            metrics.hash_index_synced(now)
            report.dropped = await self._store.drop_abandoned(ABANDONED_INDEX_SECONDS)
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
        if self._failing or self._crashing:
            log.warning("directory: the index syncs again")
        self._failing = self._crashing = False
        level = logging.INFO if report.full or report.users else logging.DEBUG
        log.log(level, "directory: %s sync: %d users in %d pages, %d removed",
                "full" if report.full else "delta", report.users, report.pages, report.removed)
        if report.dropped:
            log.info("directory: dropped %d index(es) of an earlier directory.index_key "
                     "no replica has kept for %d h", report.dropped,
                     ABANDONED_INDEX_SECONDS // 3600)

    def _report_failure(self, exc: Exception) -> None:
        self._refused = isinstance(exc, DeltaRefused)
        if self._failing:
            return  # once per outage, like the blocked list
        self._failing = True
        if self._refused:
            log.error("directory: index sync stopped: %s; trying again every "
                      "directory.sync_interval_seconds (%d s)", exc, self._interval)
            return
        hint = (f": grant the application permission {exc.permission}"
                if isinstance(exc, GraphPermissionDenied) else "")
        log.warning("directory: index sync failed (%s)%s; hashes it lacks get the default "
                    "image until it succeeds", exc, hint)


def _removals(object_ids: Sequence[str]) -> list[Entry]:
    return [Entry(object_id, frozenset()) for object_id in object_ids]
