"""``get_avatar``: metadata, cache, single-flight fetch, resize, fallback.

Reads top to bottom: find out what Graph has for the subject (cached by
freshness), serve the photo at the nearest HD size at or above the request,
and when there is no photo (or Graph cannot tell us now) draw initials.
"No photo" is cached; "Graph unavailable" or "permission missing" is not,
and such initials get a short max-age. Stale metadata is served at once and
refreshed in the background; another replica's download of the same image is
awaited rather than repeated (``coalesce``). Past a load cap or the request's
deadline the answer is initials that browsers must not store (``limits``).
The steps have homes of their own: the photo path (``photos``), what each
answer looks like (``answers``: keys, ETags, max-ages, stand-ins), what a step
costs the client (``costs``), shared fetches and the image pool (``flights``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from . import logs, metrics
from .answers import Answers
from .cache import AvatarCache, CacheSettings
from .coalesce import ReplicaCoalescer
from .costs import ADDRESS_LOOKUP, Admit, admitted, render_cost
from .errors import (
    GraphError,
    GraphNotFound,
    GraphPermissionDenied,
    InvalidImage,
    NotFound,
    Overloaded,
    RateLimited,
)
from .flights import Flights, ImagePool
from .graph.client import GraphClient
from .imaging import AvatarSettings
from .initials import InitialsRenderer
from .limits import LoadLimits
from .models import Avatar, PhotoMeta, Profile, StandIn, Subject
from .negotiation import OutputFormats
from .photos import Photos
from .readahead import ReadAhead
from .security import Policy
from .sizing import plan_fetch

log = logging.getLogger(__name__)
# Refused photo versions remembered so each is logged once (then forgotten all at once).
_REFUSED_MEMORY = 4096


def _unknown_user(subject: Subject, meta: PhotoMeta | None) -> bool:
    """Graph found no user by this key (no photo and no profile), and it is no id."""
    # The regex last: on a hit the photo settles it.
    return (meta is not None and not meta.has_photo and meta.profile is None
            and subject.kind == "user" and not subject.is_object_id)


class AvatarService:
    def __init__(self, graph: GraphClient, cache: AvatarCache, initials: InitialsRenderer,
                 cache_settings: CacheSettings, avatar_settings: AvatarSettings,
                 executor: ThreadPoolExecutor, *, limits: LoadLimits, policy: Policy,
                 coalescer: ReplicaCoalescer | None = None) -> None:
        self._graph = graph
        self._cache = cache
        self._initials = initials
        self._avatar = avatar_settings
        self._limits = limits
        self._policy = policy
        self._coalescer = coalescer or ReplicaCoalescer(None, 0, 0)
        self._answers = Answers(initials, cache, cache_settings, avatar_settings)
        self._flights = Flights()
        self._pool = ImagePool(executor, limits)
        self._photos = Photos(graph, cache, self._answers, self._flights, self._coalescer,
                              self._pool)
        self._missing_permissions: set[str] = set()
        self._refused: set[str] = set()  # photo versions already logged as refused

    async def get_avatar(self, subject: Subject, size: int, *,
                         formats: OutputFormats | None = None, fallback: bool = True,
                         admit: Admit | None = None) -> Avatar:
        formats = formats or OutputFormats(self._avatar.default_format, "png")
        # 0. Everything already in this process: answer without awaiting anything.
        hot = self.memory_hit(subject, size, formats, fallback)
        if hot is not None:
            return hot
        return await self.fetch_avatar(subject, size, formats, fallback, admit)

    async def fetch_avatar(self, subject: Subject, size: int, formats: OutputFormats,
                           fallback: bool, admit: Admit | None) -> Avatar:
        """``get_avatar`` for a caller that asked ``memory_hit`` first (the web layer):
        the rest of it, within the load caps and the deadline."""
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
            return self.stand_in(subject, size,
                                 "overload" if isinstance(exc, Overloaded) else "deadline")

    @property
    def graph(self) -> GraphClient:
        return self._graph

    @property
    def fetches_in_flight(self) -> int:
        """Shared fetches still running, including those whose callers have gone."""
        return len(self._flights)

    def health(self) -> dict[str, str]:
        """Degradations worth showing in a readiness probe; nothing here fails it."""
        redis = self._cache.redis
        return {
            "redis": "off" if redis is None else "ok" if redis.healthy else "down",
            "graph": "breaker open" if self._graph.gate.breaker_open else "ok",
        }

    def memory_hit(self, subject: Subject, size: int, formats: OutputFormats,
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
            # Photos.plan's key, inlined (its call cost a hit 1,000-2,500 instructions):
            # only the target size is in the key, and plan_fetch's is ONE_PHOTO's too.
            plan = plan_fetch(size, meta)
            body = self._cache.peek_image(self._answers.photo_key(
                subject, meta.media_etag, plan.target, formats.photo))
            if body is None:
                return None
            self._cache.count_memory_hits(2)
            return self._answers.photo(body, meta, plan, formats.photo)
        if not fallback or formats.initials == "svg":
            return None  # a 404, or SVG drawn per request: the usual path
        key = self._answers.initials_key(self._answers.look(subject, meta.profile), size,
                                         formats.initials)
        body = self._cache.peek_image(key)
        if body is None:
            return None
        self._cache.count_memory_hits(2)
        return self._answers.initials(body, key, formats.initials, meta)

    async def _get_avatar(self, subject: Subject, size: int, formats: OutputFormats,
                          fallback: bool, admit: Admit | None) -> Avatar:
        # 1. What does Graph have? None means "could not find out right now". The photo
        #    of the mediaEtag last seen comes with it (``readahead``): one Redis round trip.
        #    It is read before the owner check below (which needs the metadata it comes
        #    with: after it, a second round trip), and served only after it.
        ahead = self._photos.read_ahead(subject, size, formats.photo)
        meta = await self._metadata(subject, admit, ahead)
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
                return await self._photos.avatar(subject, meta, size, formats.photo, admit,
                                                 ahead)
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
            raise NotFound(transient=meta is None)  # None: Graph could not say
        return await self._initials_avatar(subject, meta, size, formats.initials, admit)

    async def check_owner(self, subject: Subject, admit: Admit | None = None) -> bool:
        """The rules on whose ``subject`` (an object id) is, as ``get_avatar`` applies them
        before any photo, for a caller that must know first (the hash route: a refused
        person must look like nobody, blocked or not): ``RefusedPerson`` or ``NotFound``
        if refused, ``Blocked`` if blocked by another name; False when Graph cannot say
        now. Metadata is fetched (and cached) as for an answer, within the same caps:
        ``RateLimited``, ``Overloaded`` or ``TimeoutError`` past them."""
        with self._limits.request():
            async with asyncio.timeout(self._limits.deadline):
                meta = await self._metadata(subject, admit)
        if meta is None or not self._policy.knows_owner(subject, meta):
            return False
        self._policy.check_owner(subject, meta)
        return True

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

    async def _metadata(self, subject: Subject, admit: Admit | None,
                        ahead: ReadAhead | None = None) -> PhotoMeta | None:
        cached = await self._cache.get_meta(subject, ahead)
        if cached is not None and not self._policy.knows_owner(subject, cached):
            cached = None  # written before the rules needed the id's UPN: ask again
        if cached is not None and self._cache.is_fresh(cached):
            return cached
        if not await admitted(admit, self._metadata_calls(subject, cached)):
            if cached is not None:
                return cached  # stale, and no refresh on this client's account
            raise RateLimited()
        refresh = self._flights.start("meta:" + subject.cache_id, lambda: self._coalescer.run(
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

    async def _initials_avatar(self, subject: Subject, meta: PhotoMeta | None,
                               size: int, fmt: str, admit: Admit | None) -> Avatar:
        profile = meta.profile if meta is not None else None
        if fmt == "svg":  # cheap string work: drawn on every request, not cached, free
            key, body = self._answers.svg(subject, profile, size)
            return self._answers.initials(body, key, fmt, meta)
        look = self._answers.look(subject, profile)
        key = self._answers.initials_key(look, size, fmt)
        cached = await self._cache.get_image(key)
        if cached is None:
            # Any size anyone asks for is a render: paid for like a photo's.
            if not await admitted(admit, render_cost(size)):
                raise RateLimited()
            cached = await self._pool.run(self._initials.render, look.texts, look.colour, size,
                                          fmt, look.lang)
            await self._cache.put_image(key, cached)
        return self._answers.initials(cached, key, fmt, meta)

    async def draw(self, render: Callable[..., bytes], *args: Any) -> bytes:
        """``render(*args)`` in the image pool, within its caps (``Overloaded`` past
        them): pictures the service does not own (the Gravatar defaults)."""
        return await self._pool.run(render, *args)

    def limited(self, subject: Subject, size: int, formats: OutputFormats) -> Avatar:
        """The answer to a client over its rate (``Answers.limited``): never stored."""
        return self._answers.limited(subject, size, formats)

    def stand_in(self, subject: Subject, size: int, why: StandIn) -> Avatar:
        """Cheap initials at exactly ``size``, never stored, awaiting nothing: the
        answer past a cap or when nothing better can be had (``Answers.stand_in``)."""
        return self._answers.stand_in(subject, size, why)

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
            # A contact's: Exchange's scope leaves its mailbox out. Each such mailbox once.
            whose = (f" in mailbox {logs.subject_ref(subject.mailbox)}"
                     if subject.kind == "contact" else "")
            if exc.permission + whose not in self._missing_permissions:
                self._missing_permissions.add(exc.permission + whose)
                log.error("Graph denied %s%s: grant the application permission %s "
                          "(serving initials meanwhile)", step, whose, exc.permission)
            return
        log.warning("%s failed, serving %s: %s", step,
                    "initials" if step == "metadata" else "fallback", exc)

    async def _resolve_address(self, subject: Subject, admit: Admit | None) -> Subject | None:
        """The user whose mail or proxy address ``subject`` is; the mapping is cached.

        Policy holds for the person found, whatever name the page used: their
        UPN's domain, guest status and every name of theirs are checked here
        (``NotFound``, ``Blocked``), before their photo is looked at.
        """
        self._policy.check_address_lookup()
        person = await self._cache.get_alias(subject)
        if person is None:
            if not await admitted(admit, ADDRESS_LOOKUP):
                raise RateLimited()
            try:
                person = await self._flights.join(
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
        return await self._flights.drain(within)
