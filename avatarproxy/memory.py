"""The in-process cache tier: an LRU of bytes values bounded by their total size,
with per-entry expiry, in which initials may hold only a small share.

Initials are drawn for whatever size a page, or anyone, asks for, and a
person with no photo can be asked for at a thousand sizes; a photo costs a
Graph download. So initials live in an LRU of their own, capped at
``1/INITIALS_SHARE`` of the tier, and make room only by evicting initials:
a flood of them never pushes a photo (or metadata) out. Photos and metadata
may use the whole tier, evicting initials only when no photo is left to go.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from . import metrics

_ENTRY_OVERHEAD = 128  # rough bytes of bookkeeping per entry
# Initials keys carry this (cache.AvatarCache.initials_key); no other key can,
# since UPNs, object ids and digests have no ":" or "{".
INITIALS_MARK = ":ini:{"
# Initials hold at most 1/INITIALS_SHARE of the tier: 8 MiB of the default
# 64, thousands of initials at page sizes.
INITIALS_SHARE = 8


class _Lru:
    """Entries of one kind in recency order, and their total cost."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.size = 0

    def drop(self, key: str) -> int:
        """Remove ``key``; the bytes freed."""
        entry = self.entries.pop(key, None)
        if entry is None:
            return 0
        cost = _cost(key, entry[0])
        self.size -= cost
        return cost

    def drop_oldest(self) -> int:
        return self.drop(next(iter(self.entries)))


class MemoryTier:
    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.initials_max_bytes = max_bytes // INITIALS_SHARE
        self._photos = _Lru()  # photos, downloaded sources, metadata: everything else
        self._initials = _Lru()

    @property
    def size(self) -> int:
        return self._photos.size + self._initials.size

    def _lru(self, key: str) -> _Lru:
        return self._initials if INITIALS_MARK in key else self._photos

    async def get(self, key: str) -> bytes | None:
        value = self.peek(key)
        metrics.cache_lookup(self.name, "miss" if value is None else "hit")
        return value

    def peek(self, key: str) -> bytes | None:
        """``get`` without the coroutine and uncounted: the hot path of a memory hit
        never awaits, and counts its lookups only once it has its answer."""
        lru = self._lru(key)
        entry = lru.entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            lru.drop(key)
            return None
        lru.entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl: int,
                  index: tuple[str, int] | None = None) -> None:
        """``index`` is not kept: ``purge`` finds this process's keys by their prefix."""
        lru = self._lru(key)
        lru.drop(key)
        cost = _cost(key, value)
        if lru is self._initials:
            if not self._room_for_initials(cost):
                return
        elif cost > self.max_bytes:
            return
        lru.entries[key] = (value, time.monotonic() + ttl)
        lru.size += cost
        while self.size > self.max_bytes:  # only ever for a photo: initials made room
            # The new entry is the most recent: it goes last, after every initial.
            (self._photos if len(self._photos.entries) > 1 else self._initials).drop_oldest()
        metrics.memory_bytes(self.size)

    def _room_for_initials(self, cost: int) -> bool:
        """Make room for ``cost`` bytes of initials by evicting initials only."""
        if cost > self.initials_max_bytes:
            return False
        while self._initials.entries and (
                self._initials.size + cost > self.initials_max_bytes
                or self.size + cost > self.max_bytes):
            self._initials.drop_oldest()
        return self.size + cost <= self.max_bytes

    async def purge(self, index: str, keys: tuple[str, ...],
                    prefixes: tuple[str, ...]) -> int:
        doomed = 0
        for lru in (self._photos, self._initials):
            for key in [k for k in lru.entries if k in keys or k.startswith(prefixes)]:
                lru.drop(key)
                doomed += 1
        return doomed

    async def close(self) -> None:
        self._photos, self._initials = _Lru(), _Lru()
        metrics.memory_bytes(0)


def _cost(key: str, value: bytes) -> int:
    return len(value) + len(key) + _ENTRY_OVERHEAD
