"""Policy holds for the person, whatever name the page used: ``security.blocked``
entries resolved to every name of the person, and the domain and guest rules
applied to whoever an e-mail address leads to."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import pytest
from appclient import Client, MakeClient, get

from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait

PRADEEP = FakePerson(
    "pradeep.gupta@contoso.onmicrosoft.com", "6d5c4b3a-2918-4776-8554-433221100fed",
    "Pradeep Gupta", photo=portrait(240, 240, "#222", "#999", "#c96"),
    mail="p.gupta@contoso.com",
    proxy_addresses=("SMTP:p.gupta@contoso.com", "smtp:pradeep@contoso.com", "x500:/o=Contoso"))
NESTOR = FakePerson(
    "nestor.wilke@contoso.onmicrosoft.com", "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
    "Nestor Wilke", photo=portrait(96, 96, "#135", "#579", "#9bd"), mail="nestor@contoso.com",
    proxy_addresses=("SMTP:nestor@contoso.com",))
# Another tenant's domain as UPN, a contoso.com address.
KIM = FakePerson(
    "kim.akers@fabrikam.com", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "Kim Akers",
    photo=portrait(96, 96, "#531", "#975", "#db9"), mail="kim.akers@contoso.com",
    proxy_addresses=("SMTP:kim.akers@contoso.com",))
JANE = FakePerson(
    "jane_fabrikam.com#EXT#@contoso.onmicrosoft.com", "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
    "Jane Doe (Fabrikam)", photo=portrait(96, 96, "#315", "#759", "#b9d"),
    mail="jane@fabrikam.com", proxy_addresses=("SMTP:jane@fabrikam.com",))
RESOLUTION = "$select=id,userPrincipalName,mail,proxyAddresses"


@pytest.fixture(autouse=True)
def _people(fake_graph: Any) -> None:
    for person in (PRADEEP, NESTOR, KIM, JANE):
        fake_graph.graph.add(FakePerson(**vars(person)))  # a copy: tests change people


def photos_of(fake_graph: Any, person: FakePerson) -> int:
    """Graph requests for the person's photo (metadata or bytes), by UPN or id."""
    return fake_graph.graph.count(lambda r: "/photo" in r.path and (
        person.object_id in r.path or quote(person.upn, safe="@") in r.path))


async def source(client: Client, name: str, query: str = "") -> tuple[int, str, str]:
    status, headers, _ = await get(client, f"/avatar/{name.replace('#', '%23')}/48{query}")
    return status, headers.get("X-Avatar-Source", ""), headers.get("Cache-Control", "")


@pytest.mark.parametrize("entry", [PRADEEP.upn.upper(), PRADEEP.object_id, "p.gupta@contoso.com"])
async def test_a_blocked_person_gets_initials_by_every_name_a_page_may_use(
        make_client: MakeClient, fake_graph: Any, entry: str) -> None:
    client = await make_client(security__blocked=[entry])
    for name in (PRADEEP.upn, PRADEEP.object_id, "p.gupta@contoso.com", "Pradeep@Contoso.com"):
        assert await source(client, name) == (200, "initials", "public, max-age=300"), name
        assert (await source(client, name, "?fallback=404"))[0] == 404
    assert photos_of(fake_graph, PRADEEP) == 0
    # Others, by address too, are unaffected.
    assert (await source(client, "nestor@contoso.com"))[1] == "photo"
    assert (await source(client, NESTOR.upn))[1] == "photo"


async def test_an_address_added_after_the_list_was_resolved_is_still_refused(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(security__blocked=[PRADEEP.upn])
    person = fake_graph.graph.person(PRADEEP.upn)
    person.proxy_addresses += ("smtp:gupta.p@contoso.com",)  # not known until the next TTL
    assert await source(client, "gupta.p@contoso.com") == (200, "initials", "public, max-age=300")
    assert fake_graph.graph.count("$filter=") == 1  # looked up: it leads to a blocked id
    assert photos_of(fake_graph, PRADEEP) == 0


async def test_an_address_is_held_to_the_domain_and_guest_rules_of_its_person(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(
        security__allowed_domains=["contoso.com", "contoso.onmicrosoft.com"])
    # A contoso.com address of someone whose UPN is in another domain.
    assert (await source(client, "kim.akers@contoso.com"))[0] == 404
    assert photos_of(fake_graph, KIM) == 0
    assert (await source(client, "nestor@contoso.com"))[1] == "photo"
    # A guest, by their own address, while guests are refused.
    no_guests = await make_client(security__allow_guests=False)
    assert (await source(no_guests, "jane@fabrikam.com"))[0] == 404
    assert photos_of(fake_graph, JANE) == 0
    assert (await source(no_guests, "kim.akers@contoso.com"))[1] == "photo"


async def test_while_graph_cannot_resolve_the_list_addresses_get_short_lived_initials(
        make_client: MakeClient, fake_graph: Any) -> None:
    # Graph fails every resolution: who the blocked entry is, by other names, is unknown.
    fake_graph.graph.inject(503, times=10**6, path_contains=RESOLUTION)
    client = await make_client(security__blocked=[PRADEEP.object_id],
                               graph__max_retries=0, graph__breaker_threshold=10**6)
    for address in ("p.gupta@contoso.com", "pradeep@contoso.com", "nestor@contoso.com"):
        # Any address could lead to the blocked person: initials, asked again soon.
        assert await source(client, address) == (200, "initials", "public, max-age=60")
    assert fake_graph.graph.count("$filter=") == 0  # not even looked up
    assert photos_of(fake_graph, PRADEEP) == 0
    # By UPN or id too: a person listed by id could be asked for by UPN (and the
    # reverse), which only the resolution would tell (fail closed).
    assert await source(client, PRADEEP.object_id) == (200, "initials", "public, max-age=300")
    for key in (PRADEEP.upn, NESTOR.upn, NESTOR.object_id):
        assert await source(client, key) == (200, "initials", "public, max-age=60")
    assert photos_of(fake_graph, PRADEEP) == 0


async def test_the_list_is_resolved_again_once_graph_answers(
        make_client: MakeClient, fake_graph: Any) -> None:
    fake_graph.graph.denied = {"User.ReadBasic.All", "User.Read.All"}  # not granted yet
    client = await make_client(security__blocked=[PRADEEP.object_id],
                               cache__metadata_ttl_seconds=1)
    assert (await source(client, "nestor@contoso.com"))[1] == "initials"
    fake_graph.graph.denied = set()  # granted: the next round (within the TTL) resolves
    deadline = time.monotonic() + 30
    while (await source(client, "nestor@contoso.com"))[1] != "photo":
        assert time.monotonic() < deadline, "the blocked list was never resolved again"
        await asyncio.sleep(0.1)
    fake_graph.graph.reset_requests()
    assert await source(client, PRADEEP.upn) == (200, "initials", "public, max-age=300")
    assert await source(client, "pradeep@contoso.com") == (200, "initials", "public, max-age=300")
    assert photos_of(fake_graph, PRADEEP) == 0
