"""Two cache tiers behind one interface, and the key names and TTLs they use.

The in-process tier (an LRU bounded in bytes) answers hot avatars without a
network hop; Redis, when configured, is shared by every replica and
survives restarts. Image keys contain the photo's mediaEtag: a changed photo
has new keys, so nothing is ever invalidated, and image entries are
immutable. A failing Redis counts as a miss: avatars are decoration, never
worth an error. The Redis tier goes through the process's link to Redis
(``redis.link``), whose view of Redis's health it shares with what else the
replicas keep there (download locks, throttling pauses, rate-limit buckets:
``redis.coordination``).

Keys are ``<cache.key_prefix><schema>:<kind>:{<tag>}...``: the hash tag puts
every key of one person (one initials image) in one Redis Cluster slot, so
commands that touch them together never cross slots. Values are the encoded
image bytes as they are, or metadata as a small JSON object.

Takedown (``avatarproxy purge``): every metadata and photo key written for a
person (or a contact) is also added to a small per-person set,
``idx:{cache id}`` (same slot), with the image TTL, so a purge deletes exactly
those keys without scanning the keyspace.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any, Protocol

from . import metrics
from .memory import MemoryTier as MemoryTier  # re-exported: one interface, both tiers
from .models import NOBODY, Identity, PhotoMeta, Profile, Subject
from .options import option, settings
from .readahead import LastSeen, ReadAhead
from .redis.link import RedisLink


@settings("cache")
class CacheSettings:
    """The ``[cache]`` options of the avatar tiers and of caching in browsers
    (those of the connection to Redis are ``redis.settings.RedisSettings``)."""

    coalesce_wait_seconds: float = option(
        2.0,
        "How long a replica waits for another replica's download of the same image.", minimum=0)
    memory_max_bytes: int = option(
        64 * 1024 * 1024,
        "Size of the in-process cache tier in bytes, per worker process.", minimum=0)
    metadata_ttl_seconds: int = option(
        3600,
        "How long photo metadata (sizes, mediaEtag) is fresh.", minimum=1)
    negative_ttl_seconds: int = option(900, "How long a \"no photo\" answer is fresh.", minimum=1)
    stale_ttl_seconds: int = option(
        7 * 86400,
        "How long metadata is kept for serving stale.", minimum=1)
    image_ttl_seconds: int = option(
        30 * 86400,
        "How long encoded images are kept (they are immutable).", minimum=1)
    browser_max_age: int = option(3600, "Cache-Control max-age for photos, in seconds.", minimum=0)
    stale_while_revalidate: int = option(
        86400,
        "Cache-Control stale-while-revalidate for photos: how long a browser may show an "
        "expired photo while it revalidates; 0: off.", minimum=0)
    initials_max_age: int = option(
        300,
        "Cache-Control max-age for initials (the person may upload a photo).", minimum=0)

# Bump when the key layout or stored value format changes: old entries are
# then never read (they expire by their TTL). Not for a change of rendering:
# image keys carry imaging.RENDERER_VERSION, and a bump here would also drop
# every person's metadata and downloaded photo, so each would be fetched from
# Graph again at deploy. The download locks and throttling pauses are named
# under it too (the composition root hands it to redis.coordination.SharedKeys).
SCHEMA_VERSION = "v2"


class CacheTier(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...
    # index: (a set's key, its TTL): the set also lists ``key``, for ``purge``.
    async def set(self, key: str, value: bytes, ttl: int,
                  index: tuple[str, int] | None = None) -> None: ...
    async def purge(self, index: str, keys: tuple[str, ...],
                    prefixes: tuple[str, ...]) -> int: ...
    async def close(self) -> None: ...


class RedisTier:
    """Avatars in the shared Redis, through the process's one ``RedisLink``.

    A failing Redis reads as a miss, and is then skipped for a while, exactly
    when the download locks, throttling pauses and rate limiter go without it
    too: they share the link's health.
    """

    name = "redis"

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._client = link.client

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    @property
    def writes_refused_for_memory(self) -> int:
        """Writes Redis refused for lack of memory (counted and ignored)."""
        return self._link.writes_refused_for_memory

    async def get(self, key: str) -> bytes | None:
        value = await self._link.call("GET", self._client.get(key))
        self._count(value)
        return value if isinstance(value, bytes) else None

    async def get_both(self, key: str, other: str) -> list[bytes | None] | None:
        """Two keys of one person in one round trip (GETs in a pipeline, the ACL has no
        +mget; the hash tag keeps a Cluster on one node); None if Redis did not answer.
        Only ``key``'s lookup is counted, ``other``'s if it is used (``ReadAhead.take``)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key)
        pipe.get(other)
        values: list[bytes | None] | None = await self._link.call("GET", pipe.execute())
        self._count(values[0] if values is not None else None)  # an error, if None
        return values

    def _count(self, value: object) -> None:
        if isinstance(value, bytes):
            metrics.cache_lookup(self.name, "hit")
        else:
            # Not healthy: the command failed, or Redis is being skipped after a failure.
            failed = self._link.refused or not self._link.healthy
            metrics.cache_lookup(self.name, "error" if failed else "miss")

    async def set(self, key: str, value: bytes, ttl: int,
                  index: tuple[str, int] | None = None) -> None:
        # A download lock released by this write (``coalesce``) rides along.
        rider = self._link.detach_from_write(key)
        if index is None and rider is None:
            await self._link.call("SET", self._client.set(key, value, ex=ttl))
            return
        # One round trip, not up to four: a miss waits for its writes. Not a
        # transaction (the index may live in another cluster slot); Redis runs
        # the commands in order, so the lock goes only once the value is there.
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, value, ex=ttl)
        if index is not None:
            pipe.sadd(index[0], key)
            pipe.expire(index[0], index[1])
        if rider is not None:
            rider(pipe)
        await self._link.call("SET", pipe.execute())

    async def purge(self, index: str, keys: tuple[str, ...],
                    prefixes: tuple[str, ...]) -> int:
        """Delete ``keys`` and those listed in ``index``; errors propagate (an operator asked)."""
        run = self._link.connection.run
        members = await run(self._client.smembers(index))
        listed = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        deleted = int(await run(self._client.delete(*sorted(listed | set(keys)))))
        await run(self._client.delete(index))
        return deleted

    async def close(self) -> None:
        await self._link.close()


@functools.lru_cache(maxsize=4096)  # the same mediaEtags, hit after hit
def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


class AvatarCache:
    """Metadata and encoded images over the tiers, fastest first."""

    def __init__(self, settings: CacheSettings, tiers: list[CacheTier],
                 key_prefix: str = "avatarproxy:") -> None:
        """``key_prefix``: ``cache.key_prefix`` (``redis.settings``), before every key."""
        self._settings = settings
        self.tiers = tiers
        self._prefix = f"{key_prefix}{SCHEMA_VERSION}:"
        self._memory = next((t for t in tiers if isinstance(t, MemoryTier)), None)
        # The shared tier, if configured (its health is that of every Redis user).
        self.redis = next((t for t in tiers if isinstance(t, RedisTier)), None)
        self._seen = LastSeen()  # the guesses of ReadAhead

    def photo_key(self, subject: Subject, media_etag: str, size: int, fmt: str,
                  renderer: str) -> str:
        """A rendered photo. ``renderer`` (``imaging.RENDERER_VERSION``) is in it, so a
        deploy that changes the output renders anew, from the kept source (whose key
        has no renderer: the bytes Graph sent do not change with our code)."""
        return (f"{self._prefix}img:{{{subject.cache_id}}}:{_digest(media_etag, renderer)}:"
                f"{size}:{fmt}")

    def initials_key(self, texts: Sequence[str], colour: tuple[int, int, int], size: int, fmt: str,
                     renderer: str) -> str:
        digest = _digest("|".join(texts), repr(colour), renderer)
        # ":ini:{" is memory.INITIALS_MARK: the memory tier keeps initials apart.
        return f"{self._prefix}ini:{{{digest}}}:{size}:{fmt}"

    def source_key(self, subject: Subject, media_etag: str, hd_size: int | None) -> str:
        """The photo as downloaded from Graph (``hd_size`` None: the largest): every size
        asked at or below an HD size derives from it, so it is downloaded once per version."""
        return (f"{self._prefix}src:{{{subject.cache_id}}}:{_digest(media_etag)}:"
                f"{hd_size or 'largest'}")

    def meta_key(self, subject: Subject) -> str:
        return f"{self._prefix}meta:{{{subject.cache_id}}}"

    def index_key(self, subject: Subject) -> str:
        # By cache_id, like the keys it lists: a contact whose id looks like a person's
        # object id never shares that person's index (a user's cache_id is their key).
        return f"{self._prefix}idx:{{{subject.cache_id}}}"

    async def get_image(self, key: str, ahead: ReadAhead | None = None) -> bytes | None:
        """``ahead``: what ``get_meta`` read with the metadata, used if it is ``key``'s."""
        return await self._get(key, self._settings.image_ttl_seconds, ahead)

    def peek_image(self, key: str) -> bytes | None:
        """The image if this process holds it; never asks Redis."""
        return self._memory.peek(key) if self._memory is not None else None

    def peek_meta(self, subject: Subject) -> PhotoMeta | None:
        """Metadata if this process holds it; never asks Redis."""
        raw = self._memory.peek(self.meta_key(subject)) if self._memory is not None else None
        return _meta_or_none(raw)

    @staticmethod
    def count_memory_hits(lookups: int) -> None:
        """Count the peeks of an answer served from memory (a fall-through counts
        its lookups again, as hits or misses, on the usual path)."""
        for _ in range(lookups):
            metrics.cache_lookup("memory", "hit")

    async def _get(self, key: str, ttl: int | Callable[[bytes], int],
                   ahead: ReadAhead | None = None) -> bytes | None:
        """The value from the fastest tier holding it; ``ttl`` (or ``ttl(value)``) is
        how long the faster tiers we missed in keep it."""
        for index, tier in enumerate(self.tiers):
            if ahead is not None and ahead.answered and tier is self.redis and ahead.key == key:
                value = ahead.take()  # Redis's answer for key, read with the metadata
            else:
                value = await tier.get(key)
            if value is not None:
                for faster in self.tiers[:index]:
                    await faster.set(key, value, ttl(value) if callable(ttl) else ttl)
                return value
        return None

    async def put_image(self, key: str, value: bytes, owner: Subject | None = None) -> None:
        """Store an image; ``owner`` makes it one of the keys ``purge`` removes."""
        index = self._index(owner) if owner is not None else None
        for tier in self.tiers:
            await tier.set(key, value, self._settings.image_ttl_seconds, index)

    async def get_meta(self, subject: Subject, ahead: ReadAhead | None = None
                       ) -> PhotoMeta | None:
        """The freshest metadata the tiers hold; Redis reads ``ahead`` with it.

        A stale copy does not end the lookup: another replica may have
        refreshed Redis already, and asking Redis costs one round trip where
        Graph would cost a call per process. Stale everywhere: the newest
        stale copy, which the caller serves while it refreshes.
        """
        key = self.meta_key(subject)
        best: PhotoMeta | None = None
        best_raw = b""  # as read: the faster tiers get these bytes, not an encoding anew
        behind: list[CacheTier] = []  # faster tiers that had nothing, or an older copy
        for tier in self.tiers:
            raw = await self._read_meta(tier, key, ahead)
            meta = _meta_or_none(raw)
            if meta is not None and raw is not None and (
                    best is None or meta.fetched_at > best.fetched_at):
                best, best_raw = meta, raw
            if best is not None and self.is_fresh(best):
                for faster in behind:
                    await faster.set(key, best_raw, self._settings.stale_ttl_seconds)
                break
            behind.append(tier)
        if best is not None:
            self._seen.saw(subject, best)
        if ahead is not None:  # the photo read ahead goes with this metadata only
            ahead.meta = best
        return best

    async def _read_meta(self, tier: CacheTier, key: str, ahead: ReadAhead | None) -> bytes | None:
        """``key`` from ``tier``; from Redis with ``ahead``'s photo, unless memory has it."""
        if ahead is None or tier is not self.redis or self.peek_image(ahead.key) is not None:
            return await tier.get(key)
        both = await self.redis.get_both(key, ahead.key)
        if both is not None:
            ahead.body, ahead.answered = both[1], True
        return both[0] if both is not None else None

    def last_seen(self, subject: Subject) -> PhotoMeta | None:
        """What ``ReadAhead`` guesses from: the metadata this process last saw (Redis only)."""
        return self._seen.meta(subject) if self.redis is not None else None

    async def put_meta(self, subject: Subject, meta: PhotoMeta) -> None:
        self._seen.saw(subject, meta)
        raw = _encode_meta(meta)
        for tier in self.tiers:
            await tier.set(self.meta_key(subject), raw, self._settings.stale_ttl_seconds,
                           self._index(subject))

    def _index(self, subject: Subject) -> tuple[str, int]:
        """The person's set of keys for ``purge``; it outlives every key it lists."""
        return (self.index_key(subject),
                max(self._settings.image_ttl_seconds, self._settings.stale_ttl_seconds))

    async def purge(self, subject: Subject, *, shared: bool = True) -> int:
        """Forget everything cached about ``subject``; the number of keys deleted.

        ``shared=False`` leaves Redis alone: a replica told of a purge clears
        only its own memory tier.
        """
        # The image prefix ends with "}:": a purge of a@b.co spares a@b.com.
        keys = (self.meta_key(subject),)
        self._seen.forget(subject)
        prefixes = tuple(f"{self._prefix}{kind}:{{{subject.cache_id}}}:"
                         for kind in ("img", "src"))
        tiers = self.tiers if shared else [t for t in self.tiers if isinstance(t, MemoryTier)]
        return sum([await tier.purge(self.index_key(subject), keys, prefixes) for tier in tiers])

    def is_fresh(self, meta: PhotoMeta) -> bool:
        ttl = (self._settings.metadata_ttl_seconds if meta.has_photo
               else self._settings.negative_ttl_seconds)
        return time.time() - meta.fetched_at < ttl

    def alias_key(self, subject: Subject) -> str:
        # "person:", not the "alias:" that held an object id alone: replicas of
        # either version never read the other's values.
        return f"{self._prefix}person:{{{subject.cache_id}}}"

    async def get_alias(self, subject: Subject) -> Identity | None:
        """Whom an address resolved to (``NOBODY`` included); None if not cached."""
        # "Nobody" is promoted for its own (shorter) TTL, as it is written.
        raw = await self._get(self.alias_key(subject), self._alias_ttl)
        if not raw:
            return None if raw is None else NOBODY
        try:
            data = json.loads(raw)
            return Identity(str(data["id"]), str(data["upn"]))
        except (ValueError, TypeError, KeyError):
            return None

    async def put_alias(self, subject: Subject, person: Identity) -> None:
        raw = json.dumps({"id": person.object_id, "upn": person.upn}).encode(
            "utf-8") if person.object_id else b""
        for tier in self.tiers:
            await tier.set(self.alias_key(subject), raw, self._alias_ttl(raw))

    def _alias_ttl(self, raw: bytes) -> int:
        return (self._settings.metadata_ttl_seconds if raw
                else self._settings.negative_ttl_seconds)

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()


def _encode_meta(meta: PhotoMeta) -> bytes:
    data = asdict(meta)
    if data["profile"] is not None and data["profile"]["upn"] is None:
        # Written only when known (object ids under the guest and domain rules):
        # replicas before it could not read any profile that carried the field.
        del data["profile"]["upn"]
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _meta_or_none(raw: bytes | None) -> PhotoMeta | None:
    if raw is None:
        return None
    try:
        return _decode_meta(raw)
    except (ValueError, TypeError, KeyError):
        return None


@functools.lru_cache(maxsize=4096)
def _decode_meta(raw: bytes) -> PhotoMeta:
    # Memoised: a memory-tier hit returns the same bytes object (whose hash
    # Python keeps), so the hot path skips JSON parsing; PhotoMeta is frozen.
    data = json.loads(raw)
    profile = data.pop("profile")
    # Fields this version does not know (a newer replica's) are left out, not an error.
    return PhotoMeta(**_known(PhotoMeta, data),
                     profile=Profile(**_known(Profile, profile)) if profile else None)


def _known(kind: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(kind)} - {"profile"}
    return {k: v for k, v in data.items() if k in names}
