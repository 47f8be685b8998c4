"""The photo path: a person's photo at the requested size, downloaded and rendered once.

``sizing.plan_fetch`` picks the nearest HD size at or above the request (a
``FetchPlan``: the HD size to download, the target size to produce). The
rendered image is looked up under its photo key; on a miss, the kept source
under its source key; if that is missing too, Graph's bytes are downloaded,
decoded through once (a corrupt body is never kept) and kept for the other
sizes and replicas. Each step is single flight, in the process (``flights``)
and across replicas (``coalesce``). Graph's and the image's failures are
raised to the service, which decides the fallback.
"""

from __future__ import annotations

from . import imaging
from .answers import Answers
from .cache import AvatarCache
from .coalesce import ReplicaCoalescer
from .costs import DOWNLOAD, Admit, admitted, render_cost
from .errors import RateLimited
from .flights import Flights, ImagePool
from .graph.client import GraphClient
from .models import ONE_PHOTO, Avatar, PhotoMeta, Subject
from .sizing import FetchPlan, is_placeholder, plan_fetch


class Photos:
    def __init__(self, graph: GraphClient, cache: AvatarCache, answers: Answers,
                 flights: Flights, coalescer: ReplicaCoalescer, pool: ImagePool) -> None:
        self._graph = graph
        self._cache = cache
        self._answers = answers
        self._flights = flights
        self._coalescer = coalescer
        self._pool = pool

    async def avatar(self, subject: Subject, meta: PhotoMeta, size: int, fmt: str,
                     admit: Admit | None) -> Avatar:
        """The photo ``meta`` describes, as ``fmt`` at ``size``; ``RateLimited`` if the
        client cannot pay for the work it needs."""
        plan = plan_fetch(size, meta)
        if subject.kind in ONE_PHOTO:
            # Only the largest exists: one download (and one kept source) for every size.
            plan = FetchPlan(hd_size=None, target=size)
        key = self._answers.photo_key(subject, meta, plan, fmt)
        body = await self._cache.get_image(key)
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
        source_key = self._cache.source_key(subject, meta.media_etag, plan.hd_size)
        if raw is None:
            # One download per photo version and HD size, across sizes and replicas.
            raw = await self._flights.join(source_key, lambda: self._coalescer.run(
                source_key,
                lambda: self._download(subject, plan.hd_size, source_key),
                lambda: self._cache.get_image(source_key)))
        body: bytes = await self._pool.run(imaging.render_photo, raw, plan.target, fmt)
        await self._cache.put_image(key, body, owner=subject)
        return body

    async def _download(self, subject: Subject, hd_size: int | None, source_key: str) -> bytes:
        raw = await self._graph.photo_bytes(subject, hd_size)
        # Decode it through before it is kept for other sizes and replicas
        # (one trip to the image pool: the dimensions come with it).
        width, height = await self._pool.run(imaging.verify_photo, raw)
        if hd_size is not None and is_placeholder(width, height):
            # "1x1" on /photos/{size}: that size is absent; use the largest.
            raw = await self._graph.photo_bytes(subject, None)
            await self._pool.run(imaging.verify_photo, raw)
        await self._cache.put_image(source_key, raw, owner=subject)
        return raw
