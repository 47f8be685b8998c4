"""Clients to a fresh avatarproxy app driven in-process over real HTTP: the one
factory the end-to-end test modules build their ``make_client`` from (the
conftest fixtures ``idp_settings`` and ``make_client`` cover the usual case),
and ``get`` for one request's answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.graph.auth import TokenProvider

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


def client_factory(aiohttp_client: Any, base: Mapping[str, Any],
                   tokens: TokenProvider | None = None) -> MakeClient:
    """``make(**overrides)``: a client to a new app (so a memory tier of its own,
    like another replica) on ``base`` settings and the overrides. A keyword names
    a setting with ``__`` for the dot (``cache__metadata_ttl_seconds=1``); a
    dotted key passed with ``**`` is taken as it is."""

    async def make(**overrides: Any) -> Client:
        values = {**base, **{k.replace("__", "."): v for k, v in overrides.items()}}
        app = create_app(load_settings(env={}, overrides=values), tokens=tokens)
        client: Client = await aiohttp_client(app)
        return client

    return make


def with_settings(make: MakeClient, **fixed: Any) -> MakeClient:
    """``make`` with some settings fixed (e.g. a dependency's address behind a proxy)."""

    async def make_with(**overrides: Any) -> Client:
        return await make(**fixed, **overrides)

    return make_with


async def get(client: Client, path: str, method: str = "GET",
              **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    """One request: its status, a copy of its headers, its body."""
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()
