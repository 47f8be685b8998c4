"""What operators and Kubernetes talk to: probes, ``/metrics``, request accounting.

``/healthz`` answers while the event loop runs. ``/readyz`` is false while
starting and once shutdown begins; shared dependencies (Redis, the token,
Graph) are reported in its body but never fail it: they are shared by every
replica, so failing readiness on them would take all replicas out at once,
while the service still serves from memory, Graph and initials. Neither
probe calls Graph or Redis: they report the last outcome the service saw.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from . import logs, metrics
from .errors import AvatarProxyError
from .web import REASON, refusal, security_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Readiness:
    """Ready once start-up (msal, Redis client) is done; unready from SIGTERM on."""

    ready: bool = False
    redis_configured: bool = False


READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)
_OPS_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[READINESS]
    dependencies = {"redis": "disabled", "token": "unknown", "graph": "unknown"}
    if state.redis_configured:
        dependencies["redis"] = "unknown"
    dependencies.update(metrics.dependency_states())
    body = {"ready": state.ready, "dependencies": dependencies}
    return web.Response(status=200 if state.ready else 503, text=json.dumps(body) + "\n",
                        content_type="application/json", headers={"Cache-Control": "no-store"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={
        "Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"})


# Our own ids: a random prefix per process and a counter, unique across
# replicas and restarts without asking the OS for randomness per request.
_ID_PREFIX = secrets.token_hex(4)
_ids = itertools.count(1)


def _request_id(header: str | None) -> str:
    # Keep the ingress' id when it is sane, so lines join up across hops.
    if header and len(header) <= 64 and set(header) <= _ID_CHARS:
        return header
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware (each costs a hit a layer): request id, counters and
    duration, sampled access lines; our errors become answers (``web.refusal``)."""
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    if template in _OPS_ROUTES:
        return await handler(request)
    request_id = _request_id(request.headers.get("X-Request-Id"))
    logs.REQUEST_ID.set(request_id)
    start = time.perf_counter()
    status, source = 500, "none"
    metrics.request_started()
    try:
        try:
            response = await handler(request)
        except (AvatarProxyError, web.HTTPException) as exc:
            response = refusal(request, exc)
        status = response.status
        source = "not_modified" if status == 304 else response.headers.get(
            "X-Avatar-Source", "none")
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        seconds = metrics.since(start)
        metrics.request_done(template, request.method, status, source, seconds)
        if logs.wants_access_line():
            logs.access(template, request.method, status, seconds,
                        request.match_info.get("subject"), source, request.get(REASON))


def add_routes(app: web.Application, redis_configured: bool, *,
               metrics_here: bool = True) -> None:
    """The probes, and ``/metrics`` unless ``server.metrics_port`` has it (``metrics_app``)."""
    app[READINESS] = Readiness(redis_configured=redis_configured)

    async def started(app: web.Application) -> None:
        # Runs after the composition root's start-up (cleanup_ctx goes first).
        app[READINESS].ready = True

    app.on_startup.append(started)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_here:
        app.router.add_get("/metrics", metrics_endpoint)


def metrics_app(readiness: Readiness) -> web.Application:
    """What ``server.metrics_port`` serves: ``/metrics`` and the probes, reporting
    the avatar application's readiness. A port of its own, so a NetworkPolicy can
    let Prometheus in there and nobody else (the ingress controller has no way
    to it), while the avatar port serves no metrics."""
    app = web.Application()
    app[READINESS] = readiness
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
