"""``get_avatar``: metadata, cache, single-flight fetch, resize, fallback.

Reads top to bottom: find out what Graph has for the subject (cached by
freshness), serve the photo at the nearest HD size at or above the request,
and when there is no photo (or Graph cannot tell us now) draw initials.
"No photo" is cached; "Graph unavailable" or "permission missing" is not,
and such initials get a short max-age. Stale metadata is served at once and
refreshed in the background; another replica's download of the same image is
awaited rather than repeated (``coalesce``). Past a load cap or the request's
deadline the answer is initials that browsers must not store (``limits``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from . import imaging, logs, metrics, svg, tiles
from .cache import AvatarCache
from .coalesce import ReplicaCoalescer
from .config import AvatarSettings, CacheSettings
from .errors import (
    GraphError,
    GraphNotFound,
    GraphPermissionDenied,
    InvalidImage,
    NotFound,
    Overloaded,
    RateLimited,
)
from .graph import GraphClient
from .limits import LoadLimits
from .models import Avatar, PhotoMeta, Profile, Subject
from .negotiation import OutputFormats
from .security import Policy
from .sizing import (
    FetchPlan,
    background_for,
    initials_candidates,
    is_placeholder,
    plan_fetch,
    xml_text,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# Asked before a request costs Graph calls or renders: may its client spend this
# many (one token each, ``ratelimit``)? False: RateLimited.
Admit = Callable[[int], Awaitable[bool]]
# What each step costs. Metadata is one call, and one more for the profile when
# there is no photo or an object id's UPN is needed: a person never seen is
# charged both (the unknown names a flood uses always cost both). A render costs
# a token per 256x256 pixels it makes (started): 1 up to 256 px, 16 at 1024,
# which takes ~16 times as long to draw and encode.
_DOWNLOAD = 1
_ADDRESS_LOOKUP = 1
_RENDER_PIXELS = 256 * 256

# Initials served because Graph could not answer are re-asked soon.
TRANSIENT_MAX_AGE = 60
# At shutdown, fetches past the grace are cancelled in rounds, each waited for this long.
_CANCEL_ROUNDS, _CANCEL_WAIT_SECONDS = 3, 0.5
# Largest stand-in drawn with letters: 0.4 ms of the event loop at 160 px on the
# 2-core machine, about what serving the request costs; 1.6 ms at 512, 5.5 at
# 1024, so a flood of large sizes (or of names) would stall every request.
STAND_IN_TEXT_MAX = 160
# Refused photo versions remembered so each is logged once (then forgotten all at once).
_REFUSED_MEMORY = 4096


def _unknown_user(subject: Subject, meta: PhotoMeta | None) -> bool:
    """Graph found no user by this key (no photo and no profile), and it is no id."""
    return (subject.kind == "user" and not subject.is_object_id and meta is not None
            and not meta.has_photo and meta.profile is None)


@functools.lru_cache(maxsize=4096)
def _initials_look(subject: Subject, profile: Profile | None) -> tuple[
        tuple[str, ...], tuple[int, int, int]]:
    """The initials to try, best first, and the background colour (pure, memoised)."""
    colour = background_for((profile.object_id if profile else None) or subject.key)
    return tuple(initials_candidates(profile, subject)), colour


@functools.lru_cache(maxsize=8192)  # hit after hit for the same photos
def _etag(*parts: str) -> str:
    return '"' + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:27] + '"'


class AvatarService:
    def __init__(self, graph: GraphClient, cache: AvatarCache, initials: imaging.InitialsRenderer,
                 cache_settings: CacheSettings, avatar_settings: AvatarSettings,
                 executor: ThreadPoolExecutor, *, limits: LoadLimits, policy: Policy,
                 coalescer: ReplicaCoalescer | None = None) -> None:
        self._graph = graph
        self._cache = cache
        self._initials = initials
        self._ttl = cache_settings
        self._avatar = avatar_settings
        self._executor = executor
        self._limits = limits
        self._policy = policy
        self._coalescer = coalescer or ReplicaCoalescer(None, 0, 0)
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._missing_permissions: set[str] = set()
        self._refused: set[str] = set()  # photo versions already logged as refused
        # At most ~4 MB even if every entry were 1024 px (~15 KB); most are far smaller.
        self._stand_ins = functools.lru_cache(maxsize=256)(initials.twin().render_quick)

    async def get_avatar(self, subject: Subject, size: int, *,
                         formats: OutputFormats | None = None, fallback: bool = True,
                         admit: Admit | None = None) -> Avatar:
        formats = formats or OutputFormats(self._avatar.default_format, "png")
        # 0. Everything already in this process: answer without awaiting anything.
        hot = self._memory_hit(subject, size, formats, fallback)
        if hot is not None:
            return hot
        return await self._bounded(subject, size, formats,
                                   lambda: self._get_avatar(subject, size, formats, fallback,
                                                            admit))

    async def _bounded(self, subject: Subject, size: int, formats: OutputFormats,
                       answer: Callable[[], Awaitable[Avatar]]) -> Avatar:
        """``answer()`` within the load caps and the deadline, else ``stand_in``;
        for a client over its rate, ``limited``."""
        try:
            with self._limits.request():
                async with asyncio.timeout(self._limits.deadline):
                    return await answer()
        except RateLimited:
            metrics.initials_fallback("rate_limited")
            return self.limited(subject, size, formats)
        except (Overloaded, TimeoutError) as exc:
            # Whatever was fetching goes on (shielded) and fills the cache.
            self._limits.rejected += 1
            metrics.initials_fallback("overloaded" if isinstance(exc, Overloaded) else "deadline")
            log.info("answering %s with uncached initials: %s", logs.subject_ref(subject.key),
                     str(exc) or "deadline passed")
            return self.stand_in(subject, size)

    @property
    def graph(self) -> GraphClient:
        return self._graph

    @property
    def fetches_in_flight(self) -> int:
        """Shared fetches still running, including those whose callers have gone."""
        return len(self._inflight)

    def health(self) -> dict[str, str]:
        """Degradations worth showing in a readiness probe; nothing here fails it."""
        redis = self._cache.redis
        return {
            "redis": "off" if redis is None else "ok" if redis.healthy else "down",
            "graph": "breaker open" if self._graph.gate.breaker_open else "ok",
        }

    def _memory_hit(self, subject: Subject, size: int, formats: OutputFormats,
                    fallback: bool) -> Avatar | None:
        """The answer if fresh metadata and the image are in the memory tier, else None.

        Most requests end here. Nothing is awaited, so the deadline and the
        load caps, which bound waiting on Graph, Redis and the image pool, are
        not needed; anything less than a complete answer goes the long way.
        """
        meta = self._cache.peek_meta(subject)
        if meta is None or not self._cache.is_fresh(meta) or _unknown_user(subject, meta):
            return None
        if self._policy.screens(subject) and not self._policy.shows_owner(subject, meta):
            return None  # refused, or not known whose: the long way says which
        if meta.has_photo:
            plan = plan_fetch(size, meta)
            body = self._cache.peek_image(self._photo_key(subject, meta, plan, formats.photo))
            if body is None:
                return None
            self._cache.count_memory_hits(2)
            return self._photo_avatar(body, meta, plan, formats.photo)
        if not fallback or formats.initials == "svg":
            return None  # a 404, or SVG drawn per request: the usual path
        texts, colour = _initials_look(subject, meta.profile)
        key = self._initials_key(texts, colour, size, formats.initials)
        body = self._cache.peek_image(key)
        if body is None:
            return None
        self._cache.count_memory_hits(2)
        return self._initials_result(body, key, formats.initials, meta)

    async def _get_avatar(self, subject: Subject, size: int, formats: OutputFormats,
                          fallback: bool, admit: Admit | None) -> Avatar:
        # 1. What does Graph have? None means "could not find out right now".
        meta = await self._metadata(subject, admit)
        if _unknown_user(subject, meta):
            # Not a UPN Graph knows: perhaps a mail address or an alias.
            resolved = await self._resolve_address(subject, admit)
            if resolved is not None:
                subject, meta = resolved, await self._metadata(resolved, admit)
        if meta is not None and not self._policy.knows_owner(subject, meta):
            meta = None  # another version wrote it: whose the id is, nobody can say now
        # An object id is the person it names: their UPN's domain and guest status
        # are checked before anything of theirs is fetched or shown.
        self._policy.check_owner(subject, meta)
        # 2. A photo: nearest HD size at or above the request, downscaled.
        if meta is not None and meta.has_photo:
            try:
                return await self._photo(subject, meta, size, formats.photo, admit)
            except GraphNotFound:
                # Deleted between metadata and bytes: the metadata is refreshed later.
                meta = replace(meta, has_photo=False)
            except InvalidImage as exc:
                self._note_refused(subject, meta, exc)
                meta = None
            except GraphError as exc:
                self._note_failure(subject, "photo", exc)
                meta = None
        # 3. No photo: initials, unless the page draws its own placeholder.
        if not fallback:
            raise NotFound()
        return await self._initials_avatar(subject, meta, size, formats.initials, admit)

    async def initials_only(self, subject: Subject, size: int,
                            formats: OutputFormats | None = None, *,
                            transient: bool = False, admit: Admit | None = None) -> Avatar:
        """Initials without asking Graph: for blocked people. ``transient``: an
        answer for now only (the short max-age of "Graph could not be asked").

        They wait on Redis and the image pool like any miss, so the same caps
        and deadline apply, with the same answer past them; a render is paid
        for like any other.
        """
        formats = formats or OutputFormats(self._avatar.default_format, "png")

        async def answer() -> Avatar:
            # transient: "Graph could not be asked", whatever the cache holds.
            meta = None if transient else (
                await self._cache.get_meta(subject) or PhotoMeta(has_photo=False))
            return await self._initials_avatar(subject, meta, size, formats.initials, admit)

        return await self._bounded(subject, size, formats, answer)

    def _metadata_calls(self, subject: Subject, known: PhotoMeta | None) -> int:
        """Graph calls a metadata fetch makes: the photo's, and the profile's unless
        ``known`` had a photo and the id's UPN is not needed."""
        if known is not None and known.has_photo and not self._policy.screens(subject):
            return 1
        return 2

    async def _metadata(self, subject: Subject, admit: Admit | None) -> PhotoMeta | None:
        cached = await self._cache.get_meta(subject)
        if cached is not None and not self._policy.knows_owner(subject, cached):
            cached = None  # written before the rules needed the id's UPN: ask again
        if cached is not None and self._cache.is_fresh(cached):
            return cached
        if not await _admitted(admit, self._metadata_calls(subject, cached)):
            if cached is not None:
                return cached  # stale, and no refresh on this client's account
            raise RateLimited()
        refresh = self._start("meta:" + subject.cache_id, lambda: self._coalescer.run(
            self._cache.meta_key(subject),
            lambda: self._fetch_metadata(subject), lambda: self._fresh_metadata(subject)))
        if cached is not None:
            # Stale: serve it now and refresh once in the background (single flight).
            refresh.add_done_callback(lambda done: self._note_refresh(subject, done))
            return cached
        try:
            meta: PhotoMeta = await asyncio.shield(refresh)
            return meta
        except GraphError as exc:
            self._note_failure(subject, "metadata", exc)
            return None  # never seen (stale was served above): initials, short max-age

    async def _fresh_metadata(self, subject: Subject) -> PhotoMeta | None:
        cached = await self._cache.get_meta(subject)
        return cached if cached is not None and self._cache.is_fresh(cached) and \
            self._policy.knows_owner(subject, cached) else None

    async def _fetch_metadata(self, subject: Subject) -> PhotoMeta:
        # (The coalescer has looked for a flight that ended since our cache miss.)
        meta = await self._graph.photo_meta(subject)
        screened = self._policy.screens(subject)
        if not meta.has_photo or screened:
            # Only initials need the name, and only the rules an object id's UPN:
            # otherwise photo metadata stays one call.
            profile = await self._graph.profile(subject, upn=screened)
            if profile is None and meta.has_photo:
                profile = Profile(upn="")  # a photo, but Graph names nobody: not shown
            meta = replace(meta, profile=profile)
        await self._cache.put_meta(subject, meta)
        return meta

    async def _photo(self, subject: Subject, meta: PhotoMeta, size: int, fmt: str,
                     admit: Admit | None) -> Avatar:
        plan = plan_fetch(size, meta)
        key = self._photo_key(subject, meta, plan, fmt)
        body = await self._cache.get_image(key)
        if body is None:
            source_key = self._cache.source_key(subject, meta.media_etag, plan.hd_size)
            raw = await self._cache.get_image(source_key)
            # Paid before any image work: the render, and the download unless kept.
            cost = _render_cost(plan.target) + (_DOWNLOAD if raw is None else 0)
            if not await _admitted(admit, cost):
                raise RateLimited()
            body = await self._single_flight(
                key, lambda: self._render_photo(subject, meta, plan, key, fmt, raw))
        return self._photo_avatar(body, meta, plan, fmt)

    def _photo_key(self, subject: Subject, meta: PhotoMeta, plan: FetchPlan, fmt: str) -> str:
        return self._cache.photo_key(subject, meta.media_etag, plan.target, fmt,
                                     imaging.RENDERER_VERSION)

    def _photo_avatar(self, body: bytes, meta: PhotoMeta, plan: FetchPlan, fmt: str) -> Avatar:
        etag = _etag("photo", meta.media_etag, str(plan.target), fmt, imaging.RENDERER_VERSION)
        return Avatar(body, imaging.CONTENT_TYPES[fmt], etag, "photo", self._ttl.browser_max_age,
                      self._ttl.stale_while_revalidate)

    async def _render_photo(self, subject: Subject, meta: PhotoMeta, plan: FetchPlan, key: str,
                            fmt: str, raw: bytes | None) -> bytes:
        """``raw``: the kept source if it was found, else it is downloaded."""
        source_key = self._cache.source_key(subject, meta.media_etag, plan.hd_size)
        if raw is None:
            # One download per photo version and HD size, across sizes and replicas.
            raw = await self._single_flight(source_key, lambda: self._coalescer.run(
                source_key,
                lambda: self._download(subject, plan.hd_size, source_key),
                lambda: self._cache.get_image(source_key)))
        body: bytes = await self._run(imaging.render_photo, raw, plan.target, fmt)
        await self._cache.put_image(key, body, owner=subject)
        return body

    async def _download(self, subject: Subject, hd_size: int | None, source_key: str) -> bytes:
        raw = await self._graph.photo_bytes(subject, hd_size)
        # Decode it through before it is kept for other sizes and replicas
        # (one trip to the image pool: the dimensions come with it).
        width, height = await self._run(imaging.verify_photo, raw)
        if hd_size is not None and is_placeholder(width, height):
            # "1x1" on /photos/{size}: that size is absent; use the largest.
            raw = await self._graph.photo_bytes(subject, None)
            await self._run(imaging.verify_photo, raw)
        await self._cache.put_image(source_key, raw, owner=subject)
        return raw

    async def _initials_avatar(self, subject: Subject, meta: PhotoMeta | None,
                               size: int, fmt: str, admit: Admit | None) -> Avatar:
        profile = meta.profile if meta is not None else None
        if fmt == "svg":  # cheap string work: drawn on every request, not cached, free
            key, body = self._svg(subject, profile, size)
            return self._initials_result(body, key, fmt, meta)
        texts, colour = _initials_look(subject, profile)
        key = self._initials_key(texts, colour, size, fmt)
        cached = await self._cache.get_image(key)
        if cached is None:
            # Any size anyone asks for is a render: paid for like a photo's.
            if not await _admitted(admit, _render_cost(size)):
                raise RateLimited()
            cached = await self._run(self._initials.render, texts, colour, size, fmt)
            await self._cache.put_image(key, cached)
        return self._initials_result(cached, key, fmt, meta)

    def _svg(self, subject: Subject, profile: Profile | None, size: int) -> tuple[str, bytes]:
        """SVG initials and the key their ETag is made from."""
        texts, colour = _initials_look(subject, profile)
        text = self._initials.first_covered(texts)
        # The name only if the operator asked: unsigned, anyone could turn
        # addresses into names (avatar.svg_title).
        name = profile.display_name if profile and self._avatar.svg_title else None
        title = xml_text(name or "") or text
        key = self._cache.initials_key([text, title], colour, size, "svg",
                                       imaging.RENDERER_VERSION)
        return key, svg.render(text, title, colour, imaging.text_colour(colour), size)

    def _initials_key(self, texts: tuple[str, ...], colour: tuple[int, int, int], size: int,
                      fmt: str) -> str:
        return self._cache.initials_key(texts, colour, size, fmt, imaging.RENDERER_VERSION)

    def _initials_result(self, body: bytes, key: str, fmt: str,
                         meta: PhotoMeta | None) -> Avatar:
        # meta None: Graph could not say whether a photo exists; ask again soon.
        max_age = self._ttl.initials_max_age if meta is not None else min(
            TRANSIENT_MAX_AGE, self._ttl.initials_max_age)
        return Avatar(body, imaging.CONTENT_TYPES[fmt], _etag("initials", key), "initials",
                      max_age)

    def limited(self, subject: Subject, size: int, formats: OutputFormats) -> Avatar:
        """The answer to a client over its rate: nothing it would have to pay for.

        Initials from the name the page used, as for overload (SVG when asked:
        free), never stored; no Graph, Redis or image pool.
        """
        if formats.initials != "svg":
            return self.stand_in(subject, size)
        key, body = self._svg(subject, None, size)
        return Avatar(body, imaging.CONTENT_TYPES["svg"], _etag("initials", key), "initials", 0,
                      no_store=True)

    def stand_in(self, subject: Subject, size: int) -> Avatar:
        """Initials from the UPN alone at exactly ``size``, not to be stored: the
        answer when this process is past a cap or cannot answer properly now.

        Drawn here, on the event loop, with faces of its own: no Graph, Redis,
        image pool or pool lock to wait on (the pool is busy exactly when this
        is needed). A burst repeats the same few, so recent ones are kept.
        Above ``STAND_IN_TEXT_MAX`` a plain tile in the same colour: drawing
        letters there costs the loop more than the request itself.
        """
        texts, colour = _initials_look(subject, None)
        body = (self._stand_ins(texts, colour, size) if size <= STAND_IN_TEXT_MAX
                else tiles.png(size, colour))
        return Avatar(body, imaging.CONTENT_TYPES["png"], _etag("busy", subject.key, str(size)),
                      "initials", 0, no_store=True)

    def _note_refresh(self, subject: Subject, done: asyncio.Future[Any]) -> None:
        exc = None if done.cancelled() else done.exception()
        if isinstance(exc, GraphError):
            self._note_failure(subject, "metadata refresh", exc)

    def _note_refused(self, subject: Subject, meta: PhotoMeta, exc: InvalidImage) -> None:
        """Bytes Graph holds that we will not show (HEIC, corrupt, a bomb...).

        Counted every time, logged once per photo version and process: the
        same bytes come back on every miss until the person uploads anew.
        """
        metrics.initials_fallback(type(exc).__name__)
        version = f"{subject.cache_id}\x1f{meta.media_etag}"
        if version in self._refused:
            return
        if len(self._refused) >= _REFUSED_MEMORY:
            self._refused.clear()
        self._refused.add(version)
        log.warning("photo of %s (mediaEtag %s) refused, serving initials or the 404 "
                    "fallback: %s",
                    logs.subject_ref(subject.key), meta.media_etag, exc)

    def _note_failure(self, subject: Subject, step: str, exc: Exception) -> None:
        metrics.initials_fallback(type(exc).__name__)  # a handful of our own error types
        if isinstance(exc, GraphPermissionDenied):
            if exc.permission not in self._missing_permissions:
                self._missing_permissions.add(exc.permission)
                log.error("Graph denied %s: grant the application permission %s "
                          "(serving initials meanwhile)", step, exc.permission)
            return
        log.warning("%s failed, serving %s: %s", step,
                    "initials" if step == "metadata" else "fallback", exc)

    async def _single_flight(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """Concurrent callers with the same key share one execution of ``factory``."""
        # shield: a client hanging up must not cancel the others' fetch.
        result: T = await asyncio.shield(self._start(key, factory))
        return result

    def _start(self, key: str, factory: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The running execution of ``factory`` for ``key``, started if there is none."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(factory())
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._finish(key, done))
        return future

    def _finish(self, key: str, future: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # mark retrieved: every waiter may have gone

    async def _resolve_address(self, subject: Subject, admit: Admit | None) -> Subject | None:
        """The user whose mail or proxy address ``subject`` is; the mapping is cached.

        Policy holds for the person found, whatever name the page used: their
        UPN's domain, guest status and every name of theirs are checked here
        (``NotFound``, ``Blocked``), before their photo is looked at.
        """
        self._policy.check_address_lookup()
        person = await self._cache.get_alias(subject)
        if person is None:
            if not await _admitted(admit, _ADDRESS_LOOKUP):
                raise RateLimited()
            try:
                person = await self._single_flight(
                    "alias:" + subject.key, lambda: self._graph.find_user_by_mail(subject.key))
            except GraphError as exc:
                self._note_failure(subject, "address lookup", exc)
                return None
            await self._cache.put_alias(subject, person)
        if not person.object_id:
            return None
        self._policy.check_person(person)
        return Subject(person.object_id)

    async def drain(self, within: float | None = None) -> int:
        """Wait for shared fetches still running (their callers may have gone),
        background refreshes included, up to ``within`` seconds; then cancel
        the rest. Returns how many were cancelled."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._inflight:  # one fetch may start another (a photo, its source)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.wait(list(self._inflight.values()), timeout=left)
        cut = 0
        # A cancelled fetch leaves its shielded inner one; redis-py can swallow a
        # cancellation: a few rounds, each bounded, so shutdown keeps to its grace.
        for _ in range(_CANCEL_ROUNDS):
            pending = list(self._inflight.values())
            if not pending:
                break
            cut += len(pending)
            for future in pending:
                future.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_WAIT_SECONDS)
        return cut

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        """Blocking Pillow work goes to the bounded image thread pool, if it has room."""
        with self._limits.image_job():
            return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)


def _render_cost(side: int) -> int:
    return -(-side * side // _RENDER_PIXELS)


async def _admitted(admit: Admit | None, cost: int) -> bool:
    return admit is None or await admit(cost)
