"""The photo path: a person's photo at the requested size, downloaded and rendered once.

``sizing.plan_fetch`` picks the nearest HD size at or above the request (a
``FetchPlan``: the HD size to download, the target size to produce). The
rendered image is looked up under its photo key; on a miss, the kept source
under its source key; if that is missing too, Graph's bytes are downloaded,
rendered at once (the render decodes them through: a corrupt body is never
kept) and kept for the other sizes and replicas. Each step is single flight,
in the process (``flights``) and across replicas (``coalesce``). Graph's and
the image's failures are raised to the service, which decides the fallback.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import imaging
from .answers import Answers
from .cache import AvatarCache
from .coalesce import ReplicaCoalescer
from .costs import DOWNLOAD, Admit, admitted, render_cost
from .errors import RateLimited
from .flights import Flights, ImagePool
from .graph.client import GraphClient
from .models import ONE_PHOTO, Avatar, PhotoMeta, Subject
from .readahead import ReadAhead
from .sizing import FetchPlan, is_placeholder, plan_fetch


@dataclass(frozen=True, slots=True)
class _Source:
    """A photo as Graph keeps it; ``rendered``: the (photo key, bytes) its downloader
    rendered while checking it, already stored."""

    raw: bytes
    rendered: tuple[str, bytes] | None = None


def _checked_render(raw: bytes, size: int, fmt: str) -> tuple[tuple[int, int], bytes]:
    """A downloaded photo's (width, height) and its render, in one trip to the pool.

    The render decodes the whole photo (a JPEG at a reduced scale still reads
    every block), so it is also the check that the bytes are worth keeping.
    """
    return imaging.image_dimensions(raw), imaging.render_photo(raw, size, fmt)


class Photos:
    def __init__(self, graph: GraphClient, cache: AvatarCache, answers: Answers,
                 flights: Flights, coalescer: ReplicaCoalescer, pool: ImagePool) -> None:
        self._graph = graph
        self._cache = cache
        self._answers = answers
        self._flights = flights
        self._coalescer = coalescer
        self._pool = pool

    def plan(self, subject: Subject, meta: PhotoMeta, size: int, fmt: str
             ) -> tuple[FetchPlan, str]:
        """What answers ``size`` from ``meta``'s photo, and the rendered photo's key: the
        one rule of the read-ahead's guess and the photo path (``memory_hit`` inlines it)."""
        if subject.kind in ONE_PHOTO:
            # Only the largest exists: one download (and one kept source) for every size.
            plan = FetchPlan(hd_size=None, target=size)
        else:
            plan = plan_fetch(size, meta)
        return plan, self._answers.photo_key(subject, meta.media_etag, plan.target, fmt)

    def read_ahead(self, subject: Subject, size: int, fmt: str) -> ReadAhead | None:
        """The photo to read with ``subject``'s metadata: that of the metadata last seen."""
        seen = self._cache.last_seen(subject)
        return None if seen is None else ReadAhead(self.plan(subject, seen, size, fmt)[1])

    async def avatar(self, subject: Subject, meta: PhotoMeta, size: int, fmt: str,
                     admit: Admit | None, ahead: ReadAhead | None = None) -> Avatar:
        """The photo ``meta`` describes, as ``fmt`` at ``size``; ``RateLimited`` if the
        client cannot pay for the work it needs. ``ahead``: used only if read with ``meta``
        itself (not with metadata that Graph has sent since: a purge may have come first)."""
        plan, key = self.plan(subject, meta, size, fmt)
        body = await self._cache.get_image(key, ahead if ahead is not None
                                           and ahead.meta is meta else None)
        if body is None:
            source_key = self._cache.source_key(subject, meta.media_etag, plan.hd_size)
            raw = await self._cache.get_image(source_key)
            # Paid before any image work: the render, and the download unless kept.
            cost = render_cost(plan.target) + (DOWNLOAD if raw is None else 0)
            if not await admitted(admit, cost):
                raise RateLimited()
            body = await self._flights.join(
                key, lambda: self._render(subject, meta, plan, key, fmt, raw))
        return self._answers.photo(body, meta, plan, fmt)

    async def _render(self, subject: Subject, meta: PhotoMeta, plan: FetchPlan, key: str,
                      fmt: str, raw: bytes | None) -> bytes:
        """``raw``: the kept source if it was found, else it is downloaded."""
        if raw is None:
            source_key = self._cache.source_key(subject, meta.media_etag, plan.hd_size)
            # One download per photo version and HD size, across sizes and replicas.
            source = await self._flights.join(source_key, lambda: self._coalescer.run(
                source_key,
                lambda: self._download(subject, plan, source_key, key, fmt),
                lambda: self._kept(source_key)))
            if source.rendered is not None and source.rendered[0] == key:
                return source.rendered[1]  # we downloaded it: rendered and stored already
            raw = source.raw
        body: bytes = await self._pool.run(imaging.render_photo, raw, plan.target, fmt)
        await self._cache.put_image(key, body, owner=subject)
        return body

    async def _kept(self, source_key: str) -> _Source | None:
        raw = await self._cache.get_image(source_key)
        return None if raw is None else _Source(raw)

    async def _download(self, subject: Subject, plan: FetchPlan, source_key: str, key: str,
                        fmt: str) -> _Source:
        """Graph's photo, and the render that checked it (for ``key``), both stored."""
        raw = await self._graph.photo_bytes(subject, plan.hd_size)
        (width, height), body = await self._pool.run(_checked_render, raw, plan.target, fmt)
        if plan.hd_size is not None and is_placeholder(width, height):
            # "1x1" on /photos/{size}: that size is absent; use the largest.
            raw = await self._graph.photo_bytes(subject, None)
            _, body = await self._pool.run(_checked_render, raw, plan.target, fmt)
        # Together: a miss waits for its writes. The source's write releases the
        # download lock (``coalesce``); the other replicas then find it.
        await asyncio.gather(self._cache.put_image(source_key, raw, owner=subject),
                             self._cache.put_image(key, body, owner=subject))
        return _Source(raw, (key, body))
