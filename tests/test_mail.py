"""People by e-mail address: mail or proxy addresses that are not the UPN."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from appclient import Client, MakeClient
from people import pradeep

from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait

PERSON_ID = "6d5c4b3a-2918-4776-8554-433221100fed"


@pytest.fixture(autouse=True)
def _pradeep(fake_graph: Any) -> None:
    fake_graph.graph.add(pradeep(PERSON_ID))


async def fetch(client: Client, address: str) -> tuple[str, bytes]:
    async with client.get(f"/avatar/{address}/48") as resp:
        assert resp.status == 200
        return resp.headers["X-Avatar-Source"], await resp.read()


async def test_mail_and_alias_resolve_to_one_cached_photo(
        make_client: MakeClient, fake_graph: Any) -> None:
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
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    assert (await fetch(client, "nobody.at.all@contoso.com"))[0] == "initials"
    assert fake_graph.graph.count("$filter=") == 1
    fake_graph.graph.reset_requests()
    assert (await fetch(client, "nobody.at.all@contoso.com"))[0] == "initials"
    assert fake_graph.graph.requests == []


async def test_a_upn_is_never_looked_up_by_mail(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    assert (await fetch(client, "pradeep.gupta@contoso.onmicrosoft.com"))[0] == "photo"
    assert (await fetch(client, "diego.siciliani@contoso.com"))[0] == "initials"  # no photo
    assert fake_graph.graph.count("$filter=") == 0


async def test_an_address_nobody_had_is_asked_again_after_the_negative_ttl_on_every_replica(
        make_client: MakeClient, fake_graph: Any) -> None:
    address = "newcomer@contoso.com"
    one = await make_client(cache__negative_ttl_seconds=1)
    assert (await fetch(one, address))[0] == "initials"  # nobody has it yet
    two = await make_client(cache__negative_ttl_seconds=1)  # "nobody" comes from Redis
    assert (await fetch(two, address))[0] == "initials"
    assert fake_graph.graph.count("$filter=") == 1
    fake_graph.graph.add(FakePerson(
        "n.comer@contoso.onmicrosoft.com", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "New Comer",
        photo=portrait(240, 240, "#123", "#456", "#789"), mail=address))
    # The metadata TTL is an hour; "nobody" must be forgotten after its own TTL.
    deadline = time.monotonic() + 10
    while (await fetch(two, address))[0] != "photo":
        assert time.monotonic() < deadline, "the replica kept 'nobody' past the negative TTL"
        await asyncio.sleep(0.1)
