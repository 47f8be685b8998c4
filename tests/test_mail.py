"""People by e-mail address: mail or proxy addresses that are not the UPN."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.fakegraph import FakePerson, portrait

Client = TestClient[Any, Any]
PERSON_ID = "6d5c4b3a-2918-4776-8554-433221100fed"


@pytest.fixture
def make_client(aiohttp_client: Any, fake_graph: Any, fake_idp: Any,
                redis_url: str) -> Callable[[], Awaitable[Client]]:
    fake_graph.graph.accept_token = fake_idp.issued.__contains__
    fake_graph.graph.add(FakePerson(
        "pradeep.gupta@contoso.onmicrosoft.com", PERSON_ID, "Pradeep Gupta",
        photo=portrait(240, 240, "#222", "#999", "#c96"), mail="p.gupta@contoso.com",
        proxy_addresses=("SMTP:p.gupta@contoso.com", "smtp:pradeep@contoso.com")))

    async def make() -> Client:
        settings = load_settings(env={}, overrides={
            "graph.base_url": fake_graph.base_url, "auth.tenant_id": fake_idp.tenant,
            "auth.client_id": fake_idp.client_id, "auth.client_secret": fake_idp.client_secret,
            "auth.authority": fake_idp.authority, "auth.ca_file": str(fake_idp.ca_file),
            "cache.redis_url": redis_url})
        client: Client = await aiohttp_client(create_app(settings))
        return client

    return make


async def fetch(client: Client, address: str) -> tuple[str, bytes]:
    async with client.get(f"/avatar/{address}/48") as resp:
        assert resp.status == 200
        return resp.headers["X-Avatar-Source"], await resp.read()


async def test_mail_and_alias_resolve_to_one_cached_photo(
        make_client: Callable[[], Awaitable[Client]], fake_graph: Any) -> None:
    client = await make_client()
    source, body = await fetch(client, "P.Gupta@contoso.com")
    assert source == "photo"
    assert fake_graph.graph.count("$filter=mail%20eq%20%27p.gupta%40contoso.com%27") == 1
    assert fake_graph.graph.count(f"/users/{PERSON_ID}/photos/48x48/$value") == 1
    # An alias of the same person: its photo is cached under the object id.
    assert await fetch(client, "pradeep@contoso.com") == ("photo", body)
    assert fake_graph.graph.count("$value") == 1
    fake_graph.graph.reset_requests()
    again = await make_client()  # another replica: the mapping is in Redis too
    assert await fetch(again, "p.gupta@contoso.com") == ("photo", body)
    assert fake_graph.graph.requests == []


async def test_unknown_address_gets_initials_and_is_looked_up_once(
        make_client: Callable[[], Awaitable[Client]], fake_graph: Any) -> None:
    client = await make_client()
    assert (await fetch(client, "nobody.at.all@contoso.com"))[0] == "initials"
    assert fake_graph.graph.count("$filter=") == 1
    fake_graph.graph.reset_requests()
    assert (await fetch(client, "nobody.at.all@contoso.com"))[0] == "initials"
    assert fake_graph.graph.requests == []


async def test_a_upn_is_never_looked_up_by_mail(
        make_client: Callable[[], Awaitable[Client]], fake_graph: Any) -> None:
    client = await make_client()
    assert (await fetch(client, "pradeep.gupta@contoso.onmicrosoft.com"))[0] == "photo"
    assert (await fetch(client, "diego.siciliani@contoso.com"))[0] == "initials"  # no photo
    assert fake_graph.graph.count("$filter=") == 0
