"""Composition root: build every component from ``Settings`` and wire them.

Each component gets only its own slice of the configuration. Resources that
need the event loop (HTTP session, Redis, msal) are created on start-up and
closed on clean-up.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import aiohttp
from aiohttp import web

from . import logs, ops, preflight, purge
from .auth import MsalTokenProvider, TokenProvider, scope_for
from .cache import SCHEMA_VERSION, AvatarCache, CacheTier, MemoryTier, RedisTier
from .coalesce import ReplicaCoalescer
from .config import GraphSettings, Settings
from .errors import ConfigError
from .graph import GraphClient
from .imaging import InitialsRenderer
from .limits import LoadLimits
from .purge import LISTENER
from .ratelimit import RateLimiter
from .redis import connection
from .redis.coordination import Coordination
from .security import ClientAddress, Policy
from .service import AvatarService
from .sites import Sites
from .throttle import GraphGate
from .web import (
    CLIENTS,
    DEFAULT_FORMAT,
    LIMITER,
    MAX_SIZE,
    POLICY,
    SERVER,
    SERVICE,
    SITES,
    add_routes,
    error_middleware,
    security_headers,
)

log = logging.getLogger(__name__)


class _Grace:
    """``server.grace_seconds``, from when the server stops listening (aiohttp's
    on_shutdown, just before it waits for in-flight requests): the requests and
    the Graph fetches they leave running (background refreshes, a download
    others waited for) share it, so shutdown stays within the pod's budget."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._ends: float | None = None

    async def begin(self, app: web.Application) -> None:
        self._ends = time.monotonic() + self._seconds

    def left(self) -> float:
        return self._seconds if self._ends is None else max(0.0, self._ends - time.monotonic())


def startup_problems(settings: Settings) -> list[str]:
    """What ``create_app`` or a worker would stop on, all at once: ``serve`` reports
    these before any worker starts, like the problems ``load_settings`` finds."""
    problems = (connection.check(settings.cache) + preflight.file_problems(settings)
                + preflight.listen_problems(settings.server))
    for build in (partial(ClientAddress, settings.server.trusted_proxies),
                  partial(InitialsRenderer, settings.avatar.extra_fonts)):
        try:
            build()
        except ConfigError as exc:
            problems += exc.problems
    return problems


def create_app(settings: Settings, tokens: TokenProvider | None = None) -> web.Application:
    """The aiohttp application. ``tokens`` replaces msal (the demo uses a fixed token)."""
    # Load fonts now: a bad avatar.extra_fonts stops start-up, not a request.
    initials = InitialsRenderer(settings.avatar.extra_fonts)
    problems = connection.check(settings.cache)
    if problems:
        raise ConfigError(problems)
    logs.guard_library_lines()
    app = web.Application(middlewares=[ops.observe, error_middleware])
    app[MAX_SIZE] = settings.avatar.max_size
    app[DEFAULT_FORMAT] = settings.avatar.default_format
    app[SERVER] = settings.server
    app[POLICY] = policy = Policy.from_settings(settings.security)
    app[CLIENTS] = ClientAddress(settings.server.trusted_proxies)
    app[SITES] = Sites.from_settings(settings.server, settings.cache, bool(policy.signing_keys))
    app.on_response_prepare.append(security_headers)
    grace = _Grace(settings.server.grace_seconds)
    app.on_shutdown.append(grace.begin)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = _graph_session(settings.graph)
        # One link to Redis, one view of its health: the cache tier, the download
        # locks, the throttling pauses and the rate limiter agree on whether it is up.
        shared = Coordination.connect(settings.cache, SCHEMA_VERSION)
        tiers: list[CacheTier] = [MemoryTier(settings.cache.memory_max_bytes)]
        if shared.link is not None:
            tiers.append(RedisTier(shared.link))
        cache = AvatarCache(settings.cache, tiers)
        if connection.enabled(settings.cache):
            # `avatarproxy purge` reaches this replica's memory tier through Redis.
            app[LISTENER] = purge.listener(settings.cache, cache)
            await app[LISTENER].start()
        app[LIMITER] = RateLimiter(
            settings.security.rate_limit_per_second, settings.security.rate_limit_burst,
            shared.buckets)
        executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                      thread_name_prefix="imaging")
        try:
            provider = tokens or await MsalTokenProvider.create(
                settings.auth, scope_for(settings.graph.base_url))
            graph = GraphClient(settings.graph, provider, session,
                                GraphGate(settings.graph, shared.pauses))
            # A holder renews its download lock while it works; this is how long
            # one that died keeps the other replicas waiting.
            coalescer = ReplicaCoalescer(shared.locks, settings.cache.coalesce_wait_seconds,
                                         lock_seconds=settings.graph.timeout_seconds)
            app[SERVICE] = AvatarService(graph, cache, initials, settings.cache,
                                         settings.avatar, executor,
                                         limits=LoadLimits(settings.server), policy=policy,
                                         coalescer=coalescer)
            # Know every name of the blocked people before serving, as a rule;
            # a Graph outage must not hold start-up for long (addresses wait).
            await policy.blocked.start(graph, every=settings.cache.metadata_ttl_seconds,
                                       wait=settings.graph.timeout_seconds)
            yield
        finally:
            if SERVICE in app:
                # Before the sessions close: let fetches finish and land in the cache.
                cut = await app[SERVICE].drain(grace.left())
                if cut:
                    log.warning("shutdown: cancelled %d Graph fetches still running at the "
                                "end of server.grace_seconds", cut)
            await policy.blocked.close()
            await session.close()
            await cache.close()
            await app[LIMITER].close()
            if LISTENER in app:
                await app[LISTENER].close()
            executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    ops.add_routes(app, redis_configured=connection.enabled(settings.cache),
                   metrics_here=not settings.server.metrics_port)
    return app


def _graph_session(graph: GraphSettings) -> aiohttp.ClientSession:
    ssl_context: ssl.SSLContext | bool = True
    if graph.ca_file:
        ssl_context = ssl.create_default_context(cafile=graph.ca_file)
    connector = aiohttp.TCPConnector(limit=graph.max_concurrency * 2, ssl=ssl_context)
    # No trust_env: GraphClient applies HTTPS_PROXY / NO_PROXY itself (graph.EnvProxy),
    # as requests does for the authority, without trust_env's per-request threads.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=graph.timeout_seconds))
