"""Outlook contacts' photos end to end (``/avatar/contact/{mailbox}/{id}/{size}``): real
msal against the fake identity provider, the fake Graph on loopback, a real Redis."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import redis
from appclient import MakeClient, get
from PIL import Image

from avatarproxy.config import load_settings
from avatarproxy.demo.contoso import CONTACTS_MAILBOX, demo_contacts, demo_people
from avatarproxy.errors import ConfigError
from avatarproxy.initials import DEBIAN_CJK_FONT, InitialsRenderer
from avatarproxy.security import sign_url
from avatarproxy.sizing import background_for

KEY = "contacts-signing-key"
ROB, CHAN, DESK = demo_contacts()  # a photo; 陳大文 without one; a display name only
ADELE_ID = next(p.object_id for p in demo_people() if p.upn == CONTACTS_MAILBOX)
ALEX = "alex.wilber@contoso.com"
ON = {"graph.contacts": True, "graph.contact_mailboxes": [CONTACTS_MAILBOX, ADELE_ID],
      "security.url_signing_keys": [KEY]}


def url(contact: str, size: int, mailbox: str = CONTACTS_MAILBOX, query: str = "") -> str:
    return sign_url(KEY, f"/avatar/contact/{mailbox}/{contact}/{size}{query}")


def paths(fake_graph: Any) -> list[str]:
    return [r.path for r in fake_graph.graph.requests]


def contact_path(contact: str, mailbox: str = CONTACTS_MAILBOX) -> str:
    return f"/v1.0/users/{mailbox}/contacts/{contact}"


async def test_contact_photo_is_the_largest_downscaled_and_cached_by_media_etag(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    status, headers, body = await get(client, url(ROB.object_id, 48),
                                      headers={"Accept": "image/webp,*/*"})
    assert (status, headers["X-Avatar-Source"], headers["Content-Type"]) == (
        200, "photo", "image/webp")
    assert headers["Cache-Control"] == "public, max-age=3600, stale-while-revalidate=86400"
    assert "Accept" in headers.getall("Vary") and headers["ETag"].startswith('"')
    assert Image.open(io.BytesIO(body)).size == (48, 48)
    # Graph keeps no sized photos of a contact: metadata, then the largest.
    assert paths(fake_graph) == [contact_path(ROB.object_id) + "/photo",
                                 contact_path(ROB.object_id) + "/photo/$value"]
    fake_graph.graph.reset_requests()
    again = await make_client(**ON)  # another replica: Redis has it
    status, again_headers, again_body = await get(again, url(ROB.object_id, 48),
                                                  headers={"Accept": "image/webp,*/*"})
    assert (again_body, again_headers["ETag"]) == (body, headers["ETag"])
    assert paths(fake_graph) == []
    # A 304 for the ETag the browser has, like any avatar.
    status, _, body = await get(again, url(ROB.object_id, 48), headers={
        "Accept": "image/webp,*/*", "If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")


async def test_a_new_contact_photo_has_new_keys_and_is_downloaded_once(
        make_client: MakeClient, fake_graph: Any, redis_url: str) -> None:
    client = await make_client(**ON)
    _, first, _ = await get(client, url(ROB.object_id, 64))
    contact = fake_graph.graph.person(CONTACTS_MAILBOX).contacts[ROB.object_id]
    contact.photo, contact.media_etag = contact.photo.rotate(90), '"NEWPHOTO"'
    # The metadata has expired everywhere (as cache.metadata_ttl_seconds would make it).
    store = redis.Redis.from_url(redis_url)
    store.delete(*store.keys("*meta:*"))
    store.close()
    fake_graph.graph.reset_requests()
    for _ in range(2):
        client = await make_client(**ON)  # a new replica each time: no memory tier
        _, second, _ = await get(client, url(ROB.object_id, 64))
        assert second["ETag"] != first["ETag"]
    assert paths(fake_graph).count(contact_path(ROB.object_id) + "/photo/$value") == 1


async def test_contact_without_a_photo_gets_initials_from_its_names(
        make_client: MakeClient, fake_graph: Any) -> None:
    if not DEBIAN_CJK_FONT.is_file():
        pytest.fail(f"{DEBIAN_CJK_FONT} is missing: install Debian's fonts-noto-cjk")
    client = await make_client(**ON, avatar__cjk_font=str(DEBIAN_CJK_FONT))
    status, headers, body = await get(client, url(CHAN.object_id, 64))
    assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
        200, "initials", "public, max-age=300")
    # 陳大文: a Chinese name shows the given name, in Chinese glyph forms.
    renderer = InitialsRenderer(cjk_font=DEBIAN_CJK_FONT)
    assert body == renderer.render(["大文"], background_for(CHAN.object_id), 64, "png", "zh")
    assert paths(fake_graph) == [
        contact_path(CHAN.object_id) + "/photo",
        contact_path(CHAN.object_id) + "?$select=id,displayName,givenName,surname"]
    status, headers, body = await get(client, url(DESK.object_id, 64, query="?format=svg"))
    assert headers["Content-Type"] == "image/svg+xml" and b"&#x46;&#x44;" in body  # "FD"


async def test_a_mailbox_not_listed_is_a_404_without_a_graph_call(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    for path in (url(ROB.object_id, 48, mailbox=ALEX),
                 url(ROB.object_id, 48, mailbox="nobody@contoso.com"),
                 url(ROB.object_id, 48, mailbox="not a mailbox")):
        status, headers, _ = await get(client, path)
        assert (status, headers["Cache-Control"]) == (404, "no-store"), path
    assert paths(fake_graph) == []


async def test_the_route_is_off_by_default(make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**{"security.url_signing_keys": [KEY],
                                  "graph.contact_mailboxes": [CONTACTS_MAILBOX]})
    status, _, _ = await get(client, url(ROB.object_id, 48))
    assert status == 404
    assert paths(fake_graph) == []


async def test_unsigned_or_badly_signed_requests_are_refused(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    plain = f"/avatar/contact/{CONTACTS_MAILBOX}/{ROB.object_id}/48"
    assert (await get(client, plain))[0] == 403
    other = sign_url("another-key", plain)
    assert (await get(client, other))[0] == 403
    assert paths(fake_graph) == []


async def test_the_mailbox_may_be_named_by_object_id_when_listed_so(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    status, headers, _ = await get(client, url(ROB.object_id, 48, mailbox=ADELE_ID.upper()))
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert paths(fake_graph)[0] == contact_path(ROB.object_id, ADELE_ID) + "/photo"


@pytest.mark.parametrize("contact", ["not/an/id", "has.dots", "a" * 513, "spaces%20here"])
async def test_bad_contact_ids_are_400_without_a_graph_call(
        make_client: MakeClient, fake_graph: Any, contact: str) -> None:
    client = await make_client(**ON)
    status, _, _ = await get(client, url(contact, 48))
    assert status in (400, 404)  # a "/" makes another route: none matches
    assert paths(fake_graph) == []


async def test_unknown_contact_gets_plain_initials_not_an_error(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    status, headers, body = await get(client, url("AAMkADunknownAAA=", 48))
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    # No name, and a contact has no UPN to take letters from: the colour alone.
    im = Image.open(io.BytesIO(body)).convert("RGB")
    assert len(im.getcolors() or []) == 1


async def test_a_mailbox_outside_the_apps_exchange_scope_gets_short_lived_initials(
        make_client: MakeClient, fake_graph: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake_graph.graph.contacts_scope = {ALEX}  # RBAC for Applications: Alex's mailbox only
    client = await make_client(**ON)
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            status, headers, _ = await get(client, url(ROB.object_id, 48))
            assert (status, headers["X-Avatar-Source"]) == (200, "initials")
            assert headers["Cache-Control"] == "public, max-age=60"
    lines = [r.getMessage() for r in caplog.records if "Contacts.Read" in r.getMessage()]
    assert len(lines) == 1 and "grant the application permission" in lines[0]


async def test_contacts_share_the_rate_limit_and_its_answer(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON, **{"security.rate_limit_per_second": 0.001,
                                        "security.rate_limit_burst": 3})
    first = await get(client, url(ROB.object_id, 48))
    assert first[1]["X-Avatar-Source"] == "photo"  # the bucket may go into debt once
    status, headers, body = await get(client, url(ROB.object_id, 200))
    assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
        200, "initials", "no-store")
    assert Image.open(io.BytesIO(body)).size == (200, 200)


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"graph.contacts": True, "graph.contact_mailboxes": [CONTACTS_MAILBOX]},
     "graph.contacts: needs security.url_signing_keys"),
    ({"graph.contacts": True, "security.url_signing_keys": [KEY]},
     "graph.contact_mailboxes: list the mailboxes"),
    ({**ON, "security.allowed_domains": ["fabrikam.com"]},
     f"graph.contact_mailboxes: {CONTACTS_MAILBOX}: not in security.allowed_domains"),
    ({**ON, "security.allowed_domains": ["contoso.com"]},
     f"graph.contact_mailboxes: {ADELE_ID}: list the mailbox by UPN"),
    ({**ON, "graph.contact_mailboxes": ["john_fabrikam.com#EXT#@contoso.onmicrosoft.com"],
      "security.allow_guests": False}, "a guest, and security.allow_guests is false"),
    ({**ON, "graph.contact_mailboxes": ["not a mailbox"]},
     "graph.contact_mailboxes: not a UPN or object id"),
])
def test_the_route_refuses_to_start_without_what_guards_it(
        overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides=overrides)
    assert any(problem in line for line in info.value.problems), info.value.problems


def test_the_route_off_needs_nothing() -> None:
    settings = load_settings(env={}, overrides={"graph.contact_mailboxes": ["not a mailbox"]})
    assert settings.contacts.contacts is False
