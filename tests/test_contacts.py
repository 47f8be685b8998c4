"""Outlook contacts' photos end to end (``/avatar/contact/{mailbox}/{id}/{size}``): real
msal against the fake identity provider, the fake Graph on loopback, a real Redis."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace
from typing import Any

import pytest
import redis
from aiohttp import web
from appclient import MakeClient, get
from PIL import Image

from avatarproxy.cache import SCHEMA_VERSION
from avatarproxy.cli import main
from avatarproxy.config import load_settings
from avatarproxy.demo.contoso import CONTACTS_MAILBOX, demo_contacts, demo_people
from avatarproxy.demo.graphanswers import error_response, json_response
from avatarproxy.demo.people import FakeContact, contact_id
from avatarproxy.demo.photos import portrait
from avatarproxy.errors import ConfigError, GraphPermissionDenied
from avatarproxy.graph.mailboxes import Refusals
from avatarproxy.graph.resources import contact_meta_from_json
from avatarproxy.initials import DEBIAN_CJK_FONT, InitialsRenderer
from avatarproxy.logs import subject_ref
from avatarproxy.models import PhotoMeta
from avatarproxy.security import sign_url
from avatarproxy.sizing import background_for
from avatarproxy.web import HANDLING

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


async def test_every_size_of_a_contact_comes_from_one_download(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(**ON)
    for size in (48, 96, 200, 32):
        _, _, body = await get(client, url(ROB.object_id, size))
        assert Image.open(io.BytesIO(body)).size == (size, size)
    assert paths(fake_graph).count(contact_path(ROB.object_id) + "/photo/$value") == 1


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


@pytest.mark.parametrize(("contact", "status"), [
    ("not/an/id", 404),  # a "/" makes another path: no route matches it
    ("has.dots", 400), ("a" * 513, 400), ("spaces%20here", 400),
])
async def test_bad_contact_ids_are_refused_without_a_graph_call(
        make_client: MakeClient, fake_graph: Any, contact: str, status: int) -> None:
    client = await make_client(**ON)
    assert (await get(client, url(contact, 48)))[0] == status
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


# -- Exchange's limits per mailbox ----------------------------------------------------------

def add_contacts(fake_graph: Any, mailbox: str, count: int) -> list[str]:
    """``count`` contacts with a photo in ``mailbox``; their ids."""
    ids = []
    for n in range(count):
        cid = contact_id(f"{mailbox}/c{n}")
        fake_graph.graph.person(mailbox).contacts[cid] = FakeContact(
            cid, f"Person {n}", photo=portrait(240, 240, "#112233", "#445566", "#778899"))
        ids.append(cid)
    return ids


def exchange_concurrency(fake_graph: Any) -> dict[str, int]:
    """Make the fake Graph answer contacts' calls as Exchange does: 429 past four at once
    per mailbox (no x-ms-throttle-scope). Counts the peak and the throttled calls."""
    graph, seen = fake_graph.graph, {"peak": 0, "throttled": 0, "answered": 0}
    original = graph.answer

    def answer(root: str, segments: list[str], query: Any) -> web.Response:
        if "contacts" not in segments:
            return original(root, segments, query)
        in_flight = graph.count("/contacts/") - seen["answered"]
        seen["peak"] = max(seen["peak"], in_flight)
        seen["answered"] += 1
        if in_flight > 4:
            seen["throttled"] += 1
            return error_response(429, "ApplicationThrottled", "Application is over its "
                                  "MailboxConcurrency limit.", {"Retry-After": "2"})
        return original(root, segments, query)

    graph.answer = answer
    graph.latency = 0.05  # answers overlap, as they do over a real network
    return seen


async def test_a_page_of_one_mailboxs_contacts_stays_within_four_calls_at_once(
        make_client: MakeClient, fake_graph: Any) -> None:
    ids = add_contacts(fake_graph, CONTACTS_MAILBOX, 30)
    seen = exchange_concurrency(fake_graph)
    client = await make_client(**ON)
    answers = await asyncio.gather(*(get(client, url(c, 48)) for c in ids))
    assert {h["X-Avatar-Source"] for _, h, _ in answers} == {"photo"}
    assert (seen["peak"], seen["throttled"]) == (4, 0)
    # Nothing paused the mailbox: its owner's own photo comes right after.
    _, headers, _ = await get(client, sign_url(KEY, f"/avatar/{CONTACTS_MAILBOX}/48"))
    assert headers["X-Avatar-Source"] == "photo"
    assert len(client.app[HANDLING].service.graph.mailboxes) == 0  # no mailbox is remembered idle


async def test_throttled_contacts_of_two_mailboxes_pause_only_those_mailboxes(
        make_client: MakeClient, fake_graph: Any) -> None:
    # Two mailboxes throttled without x-ms-throttle-scope: for people's photos that
    # means the app's limit; for contacts, each mailbox's own.
    ids = {box: add_contacts(fake_graph, box, 1)[0] for box in (CONTACTS_MAILBOX, ALEX)}
    fake_graph.graph.inject(429, times=2, headers={"Retry-After": "30"},
                            path_contains="/contacts/")
    client = await make_client(**{**ON, "graph.contact_mailboxes": [CONTACTS_MAILBOX, ALEX]})
    for box, cid in ids.items():
        _, headers, _ = await get(client, url(cid, 48, mailbox=box))
        assert headers["Cache-Control"] == "public, max-age=60"  # throttled: initials
    fake_graph.graph.reset_requests()
    _, headers, _ = await get(client, sign_url(KEY, "/avatar/megan.bowen@contoso.com/48"))
    assert headers["X-Avatar-Source"] == "photo"
    _, headers, _ = await get(client, url(ROB.object_id, 64))  # Adele's mailbox: paused
    assert headers["X-Avatar-Source"] == "initials"
    assert not any("/contacts/" in p for p in paths(fake_graph))


async def test_a_refused_mailbox_is_not_asked_again_for_a_minute(
        make_client: MakeClient, fake_graph: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake_graph.graph.contacts_scope = {ALEX}  # RBAC for Applications: Alex's mailbox only
    client = await make_client(**ON)
    with caplog.at_level(logging.ERROR):
        for contact in (ROB.object_id, CHAN.object_id, ROB.object_id, DESK.object_id):
            _, headers, _ = await get(client, url(contact, 48))
            assert headers["Cache-Control"] == "public, max-age=60"
    assert len([p for p in paths(fake_graph) if "/contacts/" in p]) == 1
    # The line names the mailbox, hashed as logging.log_upn asks.
    (line,) = [r.getMessage() for r in caplog.records if "Contacts.Read" in r.getMessage()]
    assert f"in mailbox {subject_ref(CONTACTS_MAILBOX)}" in line
    assert CONTACTS_MAILBOX not in line


async def test_a_refusal_is_forgotten_after_its_time() -> None:
    refusals = Refusals(seconds=0.05)
    refusals.remember("a@contoso.com", GraphPermissionDenied("403", "Contacts.Read"))
    with pytest.raises(GraphPermissionDenied) as denied:
        refusals.check("a@contoso.com")
    assert denied.value.permission == "Contacts.Read"
    refusals.check("b@contoso.com")  # another mailbox: asked
    await asyncio.sleep(0.06)
    refusals.check("a@contoso.com")


# -- the shape of a contact's photo metadata, never seen from a real tenant ------------------

@pytest.mark.parametrize(("answer", "expected"), [
    ({"@odata.mediaEtag": '"E1"', "id": "240x240", "height": 240, "width": 240},
     PhotoMeta(True, '"E1"', 240, 240)),
    ({"@odata.mediaEtag": '"E1"'}, PhotoMeta(True, '"E1"')),  # sizes unknown: the largest
    ({"id": "1x1", "@odata.mediaEtag": ""}, PhotoMeta(False)),  # the documented "none"
    ({"width": 1, "height": 1, "@odata.mediaEtag": '"E1"'}, PhotoMeta(False)),
    ({}, None), ({"@odata.mediaContentType": "image/jpeg", "width": 96}, None),  # the bytes say
])
def test_a_contacts_photo_metadata_says_none_only_when_it_says_so(
        answer: dict[str, Any], expected: PhotoMeta | None) -> None:
    meta = contact_meta_from_json(answer)
    assert (meta and replace(meta, fetched_at=0.0)) == expected


@pytest.mark.parametrize("has_photo", [True, False])
async def test_metadata_without_a_media_etag_asks_the_bytes(
        make_client: MakeClient, fake_graph: Any, redis_url: str, has_photo: bool) -> None:
    graph = fake_graph.graph
    contact = graph.person(CONTACTS_MAILBOX).contacts[(ROB if has_photo else CHAN).object_id]
    original = graph.answer

    def answer(root: str, segments: list[str], query: Any) -> web.Response:
        if segments[-1:] == ["photo"] and "contacts" in segments:  # no mediaEtag, no sizes
            return json_response({"@odata.mediaContentType": "image/jpeg"})
        return original(root, segments, query)

    graph.answer = answer
    client = await make_client(**ON)
    _, headers, _ = await get(client, url(contact.object_id, 48))
    assert headers["X-Avatar-Source"] == ("photo" if has_photo else "initials")
    _, again, _ = await get(client, url(contact.object_id, 96))
    assert again["X-Avatar-Source"] == headers["X-Avatar-Source"]
    if has_photo:  # the bytes' digest is the version: a new photo, new keys
        contact.photo, contact.media_etag = contact.photo.rotate(90), '"NEWPHOTO"'
        store = redis.Redis.from_url(redis_url)
        store.delete(*store.keys("*meta:*"))  # expired, as metadata_ttl_seconds makes it
        store.close()
        _, changed, _ = await get(await make_client(**ON), url(contact.object_id, 48))
        assert changed["ETag"] != headers["ETag"]


# -- takedown ---------------------------------------------------------------------------------

async def test_purge_takes_a_contact_down_everywhere_and_nothing_else(
        make_client: MakeClient, fake_graph: Any, redis_url: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    client = await make_client(**ON)
    for path in (url(ROB.object_id, 48), url(ROB.object_id, 96),
                 sign_url(KEY, f"/avatar/{CONTACTS_MAILBOX}/48")):
        assert (await get(client, path))[0] == 200
    store = redis.Redis.from_url(redis_url)
    before = {k.decode() for k in store.keys("*")}
    monkeypatch.setenv("AVATARPROXY_CACHE_REDIS_URL", redis_url)
    target = f"contact/{CONTACTS_MAILBOX.upper()}/{ROB.object_id}"
    assert await asyncio.to_thread(main, ["purge", target]) == 0
    # Metadata, two images and the download they came from; the replica was told.
    assert capsys.readouterr().out == (f"contact/{CONTACTS_MAILBOX}/{ROB.object_id}: 4 cached "
                                       "entries deleted, 1 running replicas told\n")
    after = {k.decode() for k in store.keys("*")}
    store.close()
    assert after == {k for k in before if ROB.object_id not in k}  # Adele's photo stays
    fake_graph.graph.reset_requests()
    await asyncio.sleep(0.2)  # the announcement reaches the replica's memory tier
    assert (await get(client, url(ROB.object_id, 48)))[0] == 200
    assert contact_path(ROB.object_id) + "/photo" in paths(fake_graph)


async def test_a_contact_never_shares_a_persons_purge_index(
        make_client: MakeClient, fake_graph: Any, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A contact id may be anything base64 allows, a person's object id too.
    client = await make_client(**ON)
    for path in (url(ADELE_ID, 48), sign_url(KEY, f"/avatar/{ADELE_ID}/48")):
        assert (await get(client, path))[0] == 200
    monkeypatch.setenv("AVATARPROXY_CACHE_REDIS_URL", redis_url)
    assert await asyncio.to_thread(main, ["purge", ADELE_ID]) == 0
    store = redis.Redis.from_url(redis_url)
    try:
        left = {k.decode() for k in store.keys("*meta:*")}
    finally:
        store.close()
    assert left == {f"avatarproxy:{SCHEMA_VERSION}:meta:{{contact:{CONTACTS_MAILBOX}:"
                    f"{ADELE_ID}}}"}


def test_purge_names_a_malformed_contact(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARPROXY_CACHE_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["purge", f"contact/{CONTACTS_MAILBOX}/not.an.id"]) == 1
    assert capsys.readouterr().err == (f"avatarproxy: purge: 'contact/{CONTACTS_MAILBOX}/"
                                       "not.an.id': not a valid contact id\n")


# -- the operator's commands ------------------------------------------------------------------

@pytest.mark.parametrize(("env", "warning"), [
    ({}, "graph.contacts is off: the service answers 404 to contact URLs"),
    ({"AVATARPROXY_GRAPH_CONTACTS": "true", "AVATARPROXY_GRAPH_CONTACT_MAILBOXES": ALEX},
     f"graph.contact_mailboxes does not list '{CONTACTS_MAILBOX}': the service answers 404 "
     "to its contacts' URLs"),
    ({"AVATARPROXY_GRAPH_CONTACTS": "true",
      "AVATARPROXY_GRAPH_CONTACT_MAILBOXES": CONTACTS_MAILBOX.upper()}, None),
])
def test_sign_warns_when_the_service_would_answer_a_contact_url_404(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: dict[str, str], warning: str | None) -> None:
    for name in ("AVATARPROXY_GRAPH_CONTACTS", "AVATARPROXY_GRAPH_CONTACT_MAILBOXES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**env, "AVATARPROXY_SECURITY_URL_SIGNING_KEYS": KEY}.items():
        monkeypatch.setenv(name, value)
    path = f"/avatar/contact/{CONTACTS_MAILBOX}/{ROB.object_id}/48"
    assert main(["sign", "https://avatars.intranet" + path]) == 0  # signed all the same
    out, err = capsys.readouterr()
    assert out == f"https://avatars.intranet{url(ROB.object_id, 48)}\n"
    assert err == (f"avatarproxy: sign: warning: {warning}\n" if warning else "")
