"""``avatarproxy demo``: the real service in front of a built-in demo tenant.

The demo tenant is the same fake Graph the tests use, served in-process on
loopback; a fixed token stands in for msal, and the cache is in memory.
Nothing reaches the internet. It reads ``--config`` and ``AVATARPROXY_*``
like ``serve`` (signing, domains, the blocked list, sizes, logging...), except
what would leave the demo: Graph, the credentials and Redis are always its own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..app import configure_logging, create_app
from ..config import load_settings
from ..graph.auth import StaticTokenProvider
from ..lifecycle import run_loop, serve_until_stopped
from .contoso import demo_groups, demo_people
from .fakegraph import FakeGraph, start_fake_graph
from .page import page_handler


def _own_tenant(graph_base_url: str) -> dict[str, Any]:
    """What the demo decides whatever the configuration says: its fake Graph, and
    memory only, so a production config never sends demo people into its Redis."""
    return {"graph.base_url": graph_base_url, "graph.ca_file": "", "cache.redis_url": "",
            "cache.redis_mode": "standalone", "cache.redis_sentinels": []}


async def demo_app(host: str, port: int, overrides: Mapping[str, Any] | None = None, *,
                   config: str | None = None,
                   env: Mapping[str, str] | None = None) -> web.Application:
    """The service on the demo tenant, plus the page at ``/``; ``overrides`` as flags,
    over ``config`` and ``env`` (none by default: tests stay hermetic)."""
    people = demo_people()
    graph = FakeGraph()
    for person in people:
        graph.add(person)
    for group in demo_groups():
        graph.add_group(group)
    token = secrets.token_urlsafe(16)
    graph.accept_token = lambda presented: presented == token
    runner, base_url = await start_fake_graph(graph)
    try:
        settings = load_settings(config, env={} if env is None else env, overrides={
            **(overrides or {}), "server.host": host, "server.port": port,
            **_own_tenant(base_url)})
        app = create_app(settings, tokens=StaticTokenProvider(token))
    except BaseException:
        await runner.cleanup()
        raise
    keys = settings.security.url_signing_keys
    app.router.add_get("/", page_handler(people, keys[0] if keys else None))

    async def stop_fake_graph(app: web.Application) -> AsyncIterator[None]:
        yield
        await runner.cleanup()

    app.cleanup_ctx.append(stop_fake_graph)
    print(f"avatarproxy demo: http://{host}:{port}/ shows all {len(people)} demo people; "
          "their avatars, for example:", flush=True)
    for person in people:
        print(f"  http://{host}:{port}/avatar/{quote(person.upn, safe='@$')}/96", flush=True)
    for group in demo_groups():
        kind = "team" if group.team else "group"
        print(f"  http://{host}:{port}/avatar/{kind}/{group.object_id}/96", flush=True)
    return app


def run_demo(host: str, port: int, config: str | None = None) -> None:
    # serve's lifecycle (readiness, SIGTERM draining, server.metrics_port), in
    # one process; --host and --port decide where it listens.
    overrides = {
        "server.host": host, "server.port": port,
        # Ctrl-C in a terminal should not wait for endpoints that do not exist.
        "server.drain_seconds": os.environ.get("AVATARPROXY_SERVER_DRAIN_SECONDS", 0)}
    settings = load_settings(config, overrides=overrides)  # problems: before anything starts
    configure_logging(settings)
    run_loop(serve_until_stopped(
        lambda: demo_app(host, port, overrides, config=config, env=os.environ),
        settings.server))
