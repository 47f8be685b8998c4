"""``avatarproxy warm``: fill the shared cache before a launch.

For each chunk of 20 people: what is already cached under a fresh mediaEtag
is skipped; the others' photo metadata comes in one ``$batch`` (names for
those without a photo in a second one), then the service fetches, resizes
and caches each missing size exactly as a live request would. If Graph (or a
proxy) refuses the batch itself, the same requests go one by one for the rest
of the run. Every Graph request passes a rate cap, and a 429 (in a batch or
not) pauses all of them for its ``Retry-After``. Every finished image is in
Redis at once, so an interrupted run loses nothing and a re-run continues
where it stopped. Each person ends in exactly one count of ``WarmStats``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from . import imaging, logs
from .app import WARM, Builder
from .cache import AvatarCache
from .config import Settings
from .errors import (
    AuthError,
    Blocked,
    ConfigError,
    GraphError,
    GraphNotFound,
    GraphPermissionDenied,
    GraphUnavailable,
    NotFound,
)
from .graph.auth import TokenProvider
from .graph.client import GraphClient
from .graph.directory import BATCH_LIMIT, batch_get, get_each, list_users
from .graph.resources import meta_from_json, profile_from_json
from .graph.urls import subject_path
from .models import PhotoMeta, Subject
from .negotiation import OutputFormats, choose
from .redis import connection
from .security import Policy
from .service import AvatarService
from .sizing import plan_fetch
from .warmreport import WarmStats, progress_line, summary

log = logging.getLogger(__name__)

ATTEMPTS = 3  # per subject, for answers Graph throttled or failed
# What Chrome, Edge, Firefox and Safari send for <img>.
BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
CONCURRENCY = 4  # Graph allows 4 concurrent photo requests per app and mailbox
_NAME_QUERY = "?$select=id,displayName,givenName,surname"


class Pacer:
    """Paces warm's Graph calls (``graph.Pacer``): a token bucket of ``rate`` requests
    a second; ``throttled`` pauses everything.

    Without a ``Retry-After`` the pause doubles each time (1 s, 2 s, ... 60 s).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        # Generic cell rate algorithm: the time the bucket would be full again.
        self._full_at = clock()
        self._paused_until = 0.0
        self._backoff = 0
        self.requests = 0
        self.throttles = 0

    async def wait(self, cost: int) -> None:
        self.requests += cost
        now = self._clock()
        while now < self._paused_until:
            await self._sleep(self._paused_until - now)
            now = self._clock()
        full_at = max(self._full_at, now)
        # A batch may cost more than the burst: it goes when the bucket is full.
        go_at = full_at if cost > self._burst else full_at + (cost - self._burst) / self._rate
        go_at = max(now, go_at)
        self._full_at = max(full_at, go_at) + cost / self._rate  # reserved before sleeping
        if go_at > now:
            await self._sleep(go_at - now)

    def throttled(self, retry_after: float | None) -> None:
        self.throttles += 1
        if retry_after is None:
            self._backoff = min(self._backoff + 1, 6)
            retry_after = min(60.0, 2.0 ** (self._backoff - 1))
        self._paused_until = max(self._paused_until, self._clock() + retry_after)


@dataclass
class _Batching:
    refused: bool = False  # Graph refused a $batch: one request per person from then on


@dataclass(frozen=True)
class Warmer:
    service: AvatarService
    cache: AvatarCache
    graph: GraphClient
    pacer: Pacer
    policy: Policy
    sizes: tuple[int, ...]
    formats: tuple[str, ...]  # photo formats; empty: the default and a browser's choice
    default_format: str
    batching: _Batching = field(default_factory=_Batching)

    async def run(self, subjects: AsyncIterable[Subject], stats: WarmStats,
                  progress: Callable[[WarmStats], None] = lambda stats: None) -> WarmStats:
        chunk: list[Subject] = []
        listed: set[Subject] = set()
        async for subject in subjects:
            if subject in listed:
                continue  # listed twice: one person, one count
            listed.add(subject)
            stats.seen += 1
            # The policy the service serves by: other domains, guests, blocked people.
            if self.policy.refuses(subject):
                stats.refused += 1
                progress(stats)
                continue
            chunk.append(subject)
            if len(chunk) == BATCH_LIMIT:
                await self._chunk(chunk, stats, progress)
                chunk = []
        if chunk:
            await self._chunk(chunk, stats, progress)
        return stats

    async def _chunk(self, subjects: list[Subject], stats: WarmStats,
                     progress: Callable[[WarmStats], None]) -> None:
        todo: dict[Subject, str] = {}
        for subject in subjects:
            meta = await self.cache.get_meta(subject)
            if meta is not None and self.cache.is_fresh(meta) and await self._complete(
                    subject, meta):
                stats.cached += 1
                progress(stats)
            else:
                todo[subject] = ""
        for _ in range(ATTEMPTS):
            if not todo:
                return
            todo = await self._attempt(list(todo), stats, progress)
        for subject, reason in todo.items():
            self._fail(stats, subject, f"Graph still throttled or unavailable after {ATTEMPTS} "
                       f"attempts ({reason})", progress)

    async def _get(self, operation: str, subjects: list[Subject],
                   paths: list[str]) -> list[dict[str, Any] | GraphError]:
        """``batch_get``; one request per person once Graph has refused a batch."""
        if not self.batching.refused:
            try:
                return await batch_get(self.graph, operation, paths)
            except (AuthError, GraphUnavailable):
                raise
            except GraphError as exc:  # a 400 or 403 for the batch itself (a proxy, say)
                self.batching.refused = True
                detail = f": {exc.detail}" if exc.detail else ""
                log.warning("warm: Graph refused $batch (%s%s): asking person by person, "
                            "paced by --rate", exc, detail)
        return await get_each(self.graph, operation, subjects, paths, CONCURRENCY)

    async def _attempt(self, subjects: list[Subject], stats: WarmStats,
                       progress: Callable[[WarmStats], None]) -> dict[Subject, str]:
        """Metadata for ``subjects``; returns those to try again, with the reason."""
        try:
            answers = await self._get("metadata", subjects,
                                      [subject_path(s) + "/photo" for s in subjects])
        except GraphUnavailable as exc:
            self.pacer.throttled(exc.retry_after)
            return dict.fromkeys(subjects, str(exc))
        retry: dict[Subject, str] = {}
        bare: list[Subject] = []
        photos: list[tuple[Subject, PhotoMeta]] = []
        for subject, answer in zip(subjects, answers, strict=True):
            if isinstance(answer, GraphNotFound):
                bare.append(subject)
            elif isinstance(answer, GraphUnavailable):
                self.pacer.throttled(answer.retry_after)
                retry[subject] = str(answer)
            elif isinstance(answer, GraphError):
                self._fail(stats, subject, str(answer), progress)
            else:
                meta = meta_from_json(answer)
                if meta.has_photo:
                    photos.append((subject, meta))
                else:
                    bare.append(subject)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(subject: Subject, meta: PhotoMeta) -> None:
            async with slots:
                await self._photo(subject, meta, stats, progress)

        await asyncio.gather(*(one(s, m) for s, m in photos))
        if bare:
            retry.update(await self._initials(bare, stats, progress))
        return retry

    async def _photo(self, subject: Subject, meta: PhotoMeta, stats: WarmStats,
                     progress: Callable[[WarmStats], None]) -> None:
        previous = await self.cache.get_meta(subject)
        await self.cache.put_meta(subject, meta)
        if previous is not None and previous.media_etag == meta.media_etag and \
                await self._complete(subject, meta):
            stats.cached += 1
            progress(stats)
            return
        for size, fmt in self._variants():
            for _ in range(ATTEMPTS):
                try:
                    # The service serves initials when Graph fails; the cache tells the truth.
                    await self.service.get_avatar(subject, size, formats=OutputFormats(
                        fmt, "png", varies=False))
                except (Blocked, NotFound):  # an object id whose owner is refused
                    stats.refused += 1
                    progress(stats)
                    return
                if await self.cache.get_image(self._key(subject, meta, size, fmt)) is not None:
                    break
            else:
                self._fail(stats, subject, f"{fmt} photo at {size} px not fetched", progress)
                return
        stats.photos += 1
        progress(stats)

    async def _initials(self, subjects: list[Subject], stats: WarmStats,
                        progress: Callable[[WarmStats], None]) -> dict[Subject, str]:
        try:
            answers = await self._get("user", subjects,
                                      [subject_path(s) + _NAME_QUERY for s in subjects])
        except GraphUnavailable as exc:
            self.pacer.throttled(exc.retry_after)
            return dict.fromkeys(subjects, str(exc))
        retry: dict[Subject, str] = {}
        for subject, answer in zip(subjects, answers, strict=True):
            if isinstance(answer, GraphUnavailable):
                self.pacer.throttled(answer.retry_after)
                retry[subject] = str(answer)
                continue
            if isinstance(answer, GraphPermissionDenied):
                self._fail(stats, subject, f"grant the application permission "
                           f"{answer.permission}", progress)
                continue
            if isinstance(answer, GraphError) and not isinstance(answer, GraphNotFound):
                self._fail(stats, subject, str(answer), progress)
                continue
            profile = None if isinstance(answer, GraphError) else profile_from_json(answer)
            await self.cache.put_meta(subject, PhotoMeta(has_photo=False, profile=profile,
                                                         fetched_at=time.time()))
            await self._no_photo(subject, profile is None, stats)
            progress(stats)
        return retry

    async def _no_photo(self, subject: Subject, nobody: bool, stats: WarmStats) -> None:
        """Initials for a person without a photo; ``nobody``: Graph knows no user by
        this key, so it may be an e-mail address (the service looks up whose)."""
        if nobody and subject.is_object_id:
            stats.unknown += 1
            stats.unknown_keys.append(subject.key)
            return
        try:
            sources = {(await self.service.get_avatar(subject, size)).source
                       for size in self.sizes}
        except (Blocked, NotFound):  # the person it leads to is refused
            stats.refused += 1
            return
        if nobody:
            person = await self.cache.get_alias(subject)  # what the lookup found
            if person is None:
                self._fail(stats, subject, "the e-mail address lookup failed", None)
                return
            if not person.object_id:
                stats.unknown += 1
                stats.unknown_keys.append(subject.key)
                return
        if "photo" in sources:  # an address of someone with a photo
            stats.photos += 1
        else:
            stats.initials += 1

    async def _complete(self, subject: Subject, meta: PhotoMeta) -> bool:
        if not meta.has_photo:
            return True  # initials are drawn locally in well under a millisecond
        for size, fmt in self._variants():
            if await self.cache.get_image(self._key(subject, meta, size, fmt)) is None:
                return False
        return True

    def _key(self, subject: Subject, meta: PhotoMeta, size: int, fmt: str) -> str:
        return self.cache.photo_key(subject, meta.media_etag, plan_fetch(size, meta).target, fmt,
                                    imaging.RENDERER_VERSION)

    def _variants(self) -> list[tuple[int, str]]:
        """(size, format) pairs to cache: by default ``avatar.default_format`` and the
        format a current browser negotiates at that size (WebP or AVIF)."""
        pairs = []
        for size in self.sizes:
            browser = choose(None, BROWSER_ACCEPT, size, self.default_format).photo
            for fmt in self.formats or dict.fromkeys((self.default_format, browser)):
                pairs.append((size, fmt))
        return pairs

    @staticmethod
    def _fail(stats: WarmStats, subject: Subject, reason: str,
              progress: Callable[[WarmStats], None] | None) -> None:
        stats.failed += 1
        stats.failures.append((subject.key, reason))
        log.warning("warm: %s: %s", logs.subject_ref(subject.key), reason)
        if progress is not None:
            progress(stats)


async def all_users(graph: GraphClient) -> AsyncIterator[Subject]:
    """Every enabled account; every account when the app lacks User.Read.All."""
    try:
        async for subject in list_users(graph, enabled_only=True):
            yield subject
    except GraphPermissionDenied:
        log.warning("warm: listing only enabled accounts needs User.Read.All: warming every "
                    "account, disabled ones included")
        async for subject in list_users(graph, enabled_only=False):
            yield subject


async def listed(subjects: Sequence[Subject]) -> AsyncIterator[Subject]:
    for subject in subjects:
        yield subject


@asynccontextmanager
async def open_warmer(settings: Settings, sizes: Sequence[int], pacer: Pacer,
                      tokens: TokenProvider | None = None,
                      formats: Sequence[str] = ()) -> AsyncIterator[Warmer]:
    """The service's own parts, built as serving builds them (``app.Builder``), on
    the shared Redis only, with a rate-capped Graph client."""
    if not connection.enabled(settings.redis):
        raise ConfigError(["cache.redis_url: warm fills the shared Redis; it is empty"])
    builder = Builder(settings, WARM, tokens=tokens, pacer=pacer)
    builder.check_redis()
    async with AsyncExitStack() as stack:
        # The live replicas' throttling pauses (shared through Redis) bind warm too;
        # an interrupted run's last fetches still land in Redis (the service drains).
        parts = await builder.open_service(stack, builder.open_cache(stack))
        # Every name of the blocked people first; without them nothing is warmed.
        if not await parts.policy.blocked.resolve(parts.graph):
            raise GraphUnavailable("security.blocked could not be resolved: not warming, "
                                   "so that no blocked person's photo is fetched")
        yield Warmer(parts.service, parts.cache, parts.graph, pacer, parts.policy,
                     tuple(sizes), tuple(formats), settings.avatar.default_format)


__all__ = ["Pacer", "WarmStats", "Warmer", "all_users", "listed", "open_warmer",
           "progress_line", "summary"]
