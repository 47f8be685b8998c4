"""The caching front before the real service, for tests/test_front*.py: the
service in-process on the fake Graph, recording each request that reaches it,
and a front as deployed (tests/front.py) before it. ``conftest.stack_for``
builds them."""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from front import BASE, Front, start_front
from multidict import CIMultiDict, CIMultiDictProxy

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.graph.auth import StaticTokenProvider

ADELE = "adele.vance@contoso.com"
PATH = f"/avatar/{ADELE}/48"
# Browsers' Accept for <img> (tests/browser_accepts.py has many more).
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,*/*"
SAFARI_15 = "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
IE_11 = "image/png, image/svg+xml, image/jxr, image/*;q=0.8, */*;q=0.5"
SHIPPED = tomllib.loads((BASE / "config.toml").read_text())


class Answer(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True)
class Seen:
    """A request that reached the service, and its answer."""

    method: str
    path: str  # with the query
    headers: CIMultiDict[str]
    status: int
    cache_control: str


@dataclass
class Stack:
    front: Front
    server: Any  # aiohttp's TestServer: the service
    seen: list[Seen]
    http: aiohttp.ClientSession

    async def get(self, path: str, method: str = "GET", **headers: str) -> Answer:
        """Through the front. Header names as keywords: If_None_Match is If-None-Match."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        async with self.http.request(method, self.front.base_url + path, headers=sent,
                                     allow_redirects=False) as resp:
            return Answer(resp.status, resp.headers, await resp.read())

    def reached(self, path: str) -> list[Seen]:
        """The requests for ``path`` (query included) that reached the service."""
        return [s for s in self.seen if s.path == path]


MakeStack = Callable[..., Awaitable[Stack]]


@asynccontextmanager
async def stacks(aiohttp_server: Any, graph_base_url: str, directory: Path
                 ) -> AsyncIterator[MakeStack]:
    """``make(env=None, **settings)``: the service (settings as in appclient, ``__``
    for the dot; the shipped ``server.trusted_proxies``) and a front before it
    (``env`` overriding the front container's environment); all stopped at the end."""
    fronts: list[Front] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(env: dict[str, str] | None = None, **settings: Any) -> Stack:
        values = {"graph.base_url": graph_base_url,
                  "server.trusted_proxies": SHIPPED["server"]["trusted_proxies"],
                  **{k.replace("__", "."): v for k, v in settings.items()}}
        app = create_app(load_settings(env={}, overrides=values),
                         tokens=StaticTokenProvider("t"))
        seen: list[Seen] = []

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            seen.append(Seen(request.method, request.path_qs, request.headers.copy(),
                             response.status, response.headers.get("Cache-Control", "")))

        app.on_response_prepare.append(record)
        server = await aiohttp_server(app)
        front = await asyncio.to_thread(start_front, directory / f"front-{len(fronts)}",
                                        server.port, env)
        fronts.append(front)
        sessions.append(aiohttp.ClientSession())
        return Stack(front, server, seen, sessions[-1])

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()
        for front in fronts:
            await asyncio.to_thread(front.stop)


def vary(answer: Answer) -> set[str]:
    return {v.strip().lower() for line in answer.headers.getall("Vary", [])
            for v in line.split(",")}


async def until_age(started: float, seconds: float) -> None:
    """Sleep until ``seconds`` after ``started``: a copy the front held by then (its
    answer had arrived) is that old at least."""
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
