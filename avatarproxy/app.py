"""Composition root: the one place that builds the application's parts from ``Settings``.

``serve`` (``create_app``), ``warm`` (``warm.open_warmer``) and ``doctor`` build
through ``Builder``, so they see the same parts made the same way: one
``Policy`` (signing, domains, guests, the blocked list), the Graph session, the
token provider and the throttle gate, the cache tiers and their keys. What
differs between the commands is named in one place, ``Role``. Each component
gets only its own slice of the configuration.

Resources that need the event loop (HTTP session, Redis, msal, the image
threads) are opened on an ``AsyncExitStack`` and closed with it, the last
opened first: the service drains before the sessions it fetches through close.

Process-wide choices are made here too, explicitly, never on import:
``configure_logging`` where a process starts, and ``create_app`` takes over
aiohttp's own answers for every server in the process.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from functools import partial

import aiohttp
from aiohttp import web

from . import logs, ops, preflight, purge
from .cache import SCHEMA_VERSION, AvatarCache, CacheTier, MemoryTier, RedisTier
from .coalesce import ReplicaCoalescer
from .config import Settings
from .contacts import ContactRules
from .errors import ConfigError
from .graph.auth import MsalTokenProvider, TokenProvider, scope_for
from .graph.client import GraphClient, Pacer
from .graph.settings import GraphSettings
from .graph.throttle import GraphGate
from .hashavatars import HashAvatars
from .hashindex import HashIndex, IndexKeys, IndexStore, MemoryIndex
from .indexsync import IndexSync
from .initials import InitialsRenderer
from .limits import LoadLimits
from .purge import LISTENER
from .ratelimit import RateLimiter
from .redis import connection
from .redis.addressindex import RedisIndex
from .redis.coordination import Coordination
from .security import ClientAddress, Policy
from .service import AvatarService
from .sites import Sites
from .web import (
    HANDLING,
    Handling,
    add_hash_route,
    add_routes,
    security_headers,
    take_over_aiohttp_answers,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Role:
    """How a command uses the parts, where it differs from serving; all else is shared."""

    memory_tier: bool = True  # warm fills the shared Redis only
    imaging_threads: int = 0  # 0: one per CPU
    thread_name: str = "imaging"
    # No token at start-up: serve starts degraded; a warm run has nothing to do.
    strict_token: bool = False
    # Replicas wait for the one downloading a photo (a Redis lock); warm does not.
    coalesce_replicas: bool = True
    # No browser waits for warm: a photo may take as long as Graph needs.
    min_deadline_seconds: float = 0.0


SERVE = Role()
WARM = Role(memory_tier=False, imaging_threads=2, thread_name="warm", strict_token=True,
            coalesce_replicas=False, min_deadline_seconds=60.0)


@dataclass(frozen=True, slots=True)
class Parts:
    """What serving and warming work with, opened by ``Builder.open_service``."""

    policy: Policy
    cache: AvatarCache
    graph: GraphClient
    service: AvatarService


class Builder:
    """Builds every part from ``Settings``, the same way for ``serve``, ``warm`` and
    ``doctor``. ``tokens`` replaces msal (the demo's fixed token, doctor's), ``pacer``
    caps Graph requests a second (warm's ``--rate``)."""

    def __init__(self, settings: Settings, role: Role = SERVE, *,
                 tokens: TokenProvider | None = None, pacer: Pacer | None = None) -> None:
        self.settings = settings
        self.role = role
        self.policy = Policy.from_settings(settings.security)
        self._tokens = tokens
        self._pacer = pacer
        self._initials: InitialsRenderer | None = None
        self._shared: Coordination | None = None

    def check_redis(self) -> None:
        """``ConfigError`` naming every problem of the Redis settings."""
        problems = connection.check(self.settings.redis)
        if problems:
            raise ConfigError(problems)

    def initials(self) -> InitialsRenderer:
        """The renderer, fonts loaded on the first call (``ConfigError`` if one cannot be)."""
        if self._initials is None:
            self._initials = InitialsRenderer.from_settings(self.settings.avatar)
        return self._initials

    def shared(self, stack: AsyncExitStack) -> Coordination:
        """The process's one link to Redis and what the replicas share over it: one view
        of its health for the cache tier, the download locks, the throttling pauses and
        the rate limiter. Every part is None without Redis."""
        if self._shared is None:
            self._shared = Coordination.connect(self.settings.redis, SCHEMA_VERSION)
            if self._shared.link is not None:
                stack.push_async_callback(self._shared.link.close)
        return self._shared

    def open_cache(self, stack: AsyncExitStack) -> AvatarCache:
        """The avatar cache: the memory tier (unless the role fills Redis only) in
        front of the Redis tier, when Redis is configured."""
        settings = self.settings.cache
        tiers: list[CacheTier] = []
        if self.role.memory_tier:
            tiers.append(MemoryTier(settings.memory_max_bytes))
        link = self.shared(stack).link
        if link is not None:
            tiers.append(RedisTier(link))
        cache = AvatarCache(settings, tiers, self.settings.redis.key_prefix)
        stack.push_async_callback(cache.close)
        return cache

    async def open_graph(self, stack: AsyncExitStack, *, share_pauses: bool = False
                         ) -> GraphClient:
        """The Graph client; ``share_pauses``: throttling pauses are shared with the
        other replicas through Redis (else they stay in this process)."""
        session = _graph_session(self.settings.graph)
        stack.push_async_callback(session.close)
        tokens = self._tokens or await MsalTokenProvider.create(
            self.settings.auth, scope_for(self.settings.graph.base_url),
            strict=self.role.strict_token)
        gate = (GraphGate(self.settings.graph, self.shared(stack).pauses) if share_pauses
                else None)
        return GraphClient(self.settings.graph, tokens, session, gate, self._pacer)

    async def open_service(self, stack: AsyncExitStack, cache: AvatarCache, *,
                           drain_within: Callable[[], float | None] = lambda: None) -> Parts:
        """The service and the Graph client it fetches through. On close, it first
        lets its fetches finish and land in the cache, for ``drain_within()`` seconds
        (None: as long as they take), then stops the blocked list's refreshes."""
        graph = await self.open_graph(stack, share_pauses=True)
        stack.push_async_callback(self.policy.blocked.close)
        executor = ThreadPoolExecutor(max_workers=self.role.imaging_threads or os.cpu_count() or 2,
                                      thread_name_prefix=self.role.thread_name)
        stack.callback(executor.shutdown, wait=False, cancel_futures=True)
        service = AvatarService(graph, cache, self.initials(), self.settings.cache,
                                self.settings.avatar, executor, limits=self._limits(),
                                policy=self.policy, coalescer=self._coalescer(stack))
        stack.push_async_callback(_drain, service, drain_within)
        return Parts(self.policy, cache, graph, service)

    async def open_hashes(self, stack: AsyncExitStack, parts: Parts) -> HashAvatars:
        """Gravatar URLs (``directory.gravatar``): the hash index, in Redis when it is
        configured (shared, one syncer at a time) else in this process, kept current
        by users delta rounds from now on (start-up waits ``graph.timeout_seconds``
        at most for the first), and the answers over it."""
        directory = self.settings.directory
        link = self.shared(stack).link
        keys = IndexKeys(directory.index_key)
        store: IndexStore = (MemoryIndex() if link is None else RedisIndex(
            link, self.settings.redis.key_prefix, keys.fingerprint))
        index = HashIndex(store, keys)
        sync = IndexSync(parts.graph, index, directory.sync_interval_seconds)
        stack.push_async_callback(sync.close)
        await sync.start(wait=self.settings.graph.timeout_seconds)
        return HashAvatars(parts.service, self.policy, index,
                           self.settings.cache.initials_max_age)

    def _limits(self) -> LoadLimits:
        server = self.settings.server
        if server.request_deadline_seconds < self.role.min_deadline_seconds:
            server = replace(server, request_deadline_seconds=self.role.min_deadline_seconds)
        return LoadLimits(server)

    def _coalescer(self, stack: AsyncExitStack) -> ReplicaCoalescer | None:
        if not self.role.coalesce_replicas:
            return None
        # A holder renews its download lock while it works; this is how long
        # one that died keeps the other replicas waiting.
        return ReplicaCoalescer(self.shared(stack).locks,
                                self.settings.cache.coalesce_wait_seconds,
                                lock_seconds=self.settings.graph.timeout_seconds)


async def _drain(service: AvatarService, within: Callable[[], float | None]) -> None:
    cut = await service.drain(within())
    if cut:
        log.warning("shutdown: cancelled %d Graph fetches still running at the "
                    "end of server.grace_seconds", cut)


def _graph_session(graph: GraphSettings) -> aiohttp.ClientSession:
    ssl_context: ssl.SSLContext | bool = True
    if graph.ca_file:
        ssl_context = ssl.create_default_context(cafile=graph.ca_file)
    connector = aiohttp.TCPConnector(limit=graph.max_concurrency * 2, ssl=ssl_context)
    # No trust_env: GraphClient applies HTTPS_PROXY / NO_PROXY itself (graph.client.EnvProxy),
    # as requests does for the authority, without trust_env's per-request threads.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=graph.timeout_seconds))


def configure_logging(settings: Settings, *, output: bool = True) -> None:
    """Where a process starts (``serve`` and each worker, ``demo``, ``warm``): log
    lines as ``logging.*`` says. ``output``: on stdout in ``logging.format``;
    without, only what lines say (``log_upn``, access sampling), for a command
    whose lines stay plain text for a person at a terminal."""
    if output:
        logs.configure(settings.logging)
    else:
        logs.adopt(settings.logging)


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
    problems = (connection.check(settings.redis) + preflight.file_problems(settings)
                + preflight.listen_problems(settings.server))
    for build in (partial(ClientAddress, settings.server.trusted_proxies),
                  partial(InitialsRenderer.from_settings, settings.avatar)):
        try:
            build()
        except ConfigError as exc:
            problems += exc.problems
    return problems


def create_app(settings: Settings, tokens: TokenProvider | None = None) -> web.Application:
    """The aiohttp application. ``tokens`` replaces msal (the demo uses a fixed token)."""
    builder = Builder(settings, SERVE, tokens=tokens)
    builder.initials()  # fonts now: a bad avatar.*_font(s) stops start-up, not a request
    builder.check_redis()
    # Process-wide (aiohttp and logging have no per-app hook for these); idempotent.
    take_over_aiohttp_answers()
    logs.guard_library_lines()
    app = web.Application(middlewares=[ops.observe])
    app.on_response_prepare.append(security_headers)
    grace = _Grace(settings.server.grace_seconds)
    handling = _handling(settings, builder.policy)
    app.on_shutdown.append(grace.begin)

    async def serving(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await _open_serving(app, builder, stack, grace, handling)
            yield

    app.cleanup_ctx.append(serving)
    add_routes(app)
    if settings.directory.gravatar:
        add_hash_route(app)
    ops.add_routes(app, redis_configured=connection.enabled(settings.redis),
                   metrics_here=not settings.server.metrics_port)
    return app


def _handling(settings: Settings, policy: Policy) -> Callable[..., Handling]:
    """What the handlers read, each part its own slice of the settings, built now (a
    bad setting stops start-up), but for the parts that start with the service."""
    signed = bool(policy.signing_keys)
    return partial(
        Handling, policy=policy, server=settings.server, max_size=settings.avatar.max_size,
        sites=Sites.from_settings(settings.server, settings.cache, signed),
        default_format=settings.avatar.default_format,
        clients=ClientAddress(settings.server.trusted_proxies),
        contacts=ContactRules.from_settings(settings.contacts, signed))


async def _open_serving(app: web.Application, builder: Builder, stack: AsyncExitStack,
                        grace: _Grace, handling: Callable[..., Handling]) -> None:
    """Start-up: the cache, the purge listener, the rate limiter, then the service."""
    settings = builder.settings
    cache = builder.open_cache(stack)
    if connection.enabled(settings.redis):
        # `avatarproxy purge` reaches this replica's memory tier through Redis.
        app[LISTENER] = purge.listener(settings.redis, cache)
        stack.push_async_callback(app[LISTENER].close)
        await app[LISTENER].start()
    limiter = RateLimiter(
        settings.security.rate_limit_per_second, settings.security.rate_limit_burst,
        builder.shared(stack).buckets)
    stack.push_async_callback(limiter.close)
    # On shutdown, fetches still running share what is left of server.grace_seconds.
    parts = await builder.open_service(stack, cache, drain_within=grace.left)
    # Know every name of the blocked people before serving, as a rule;
    # a Graph outage must not hold start-up for long (addresses wait).
    policy = builder.policy
    await policy.blocked.start(parts.graph, every=settings.cache.metadata_ttl_seconds,
                               wait=settings.graph.timeout_seconds)
    hashes = await builder.open_hashes(stack, parts) if settings.directory.gravatar else None
    app[HANDLING] = handling(service=parts.service, limiter=limiter, hashes=hashes)
