"""Gravatar and Libravatar URLs, end to end: each tool's URL habit as
docs/integrations.md documents it, the defaults drawn from the hash alone, the
policy on the person found, the rate limit on every lookup, and the switches
that keep the feature off or refuse it next to signed URLs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from typing import Any
from urllib.parse import quote

import pytest
from appclient import Client, MakeClient, client_factory, get
from people import pradeep
from PIL import Image
from prometheus_client import REGISTRY

from avatarproxy import metrics
from avatarproxy.config import load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait
from avatarproxy.errors import ConfigError
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.hashavatars import HashAvatars
from avatarproxy.web import HANDLING

KEY = "index-key-for-the-tests-0123456789"
PRADEEP = "6d5c4b3a-2918-4776-8554-433221100fed"
ON = {"directory.gravatar": True, "directory.index_key": KEY}


def md5(address: str) -> str:
    return hashlib.md5(address.strip().lower().encode(), usedforsecurity=False).hexdigest()


def sha256(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


NOBODY = md5("nobody.at.all@contoso.com")


@pytest.fixture(autouse=True)
def _pradeep(fake_graph: Any) -> None:
    fake_graph.graph.add(pradeep(PRADEEP))


@pytest.fixture
def serve(aiohttp_client: Any, fake_graph: Any) -> MakeClient:
    """A client to a fresh service with Gravatar URLs on, its index in memory."""
    return client_factory(aiohttp_client, {"graph.base_url": fake_graph.base_url, **ON},
                          tokens=StaticTokenProvider("static-token"))


@pytest.fixture
def serve_redis(serve: MakeClient, redis_url: str) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        return await serve(cache__redis_url=redis_url, **overrides)
    return make


async def fetch(client: Client, path: str, **headers: str) -> tuple[int, Any, bytes]:
    return await get(client, path, headers=headers)


def size_of(body: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(body)).size


def photo_calls(fake_graph: Any) -> int:
    return fake_graph.graph.count("/$value")


# -- each tool's habit ---------------------------------------------------------------

async def test_gitlab_hash_url_gets_the_photo_by_md5_of_any_address(
        serve: MakeClient, fake_graph: Any) -> None:
    client = await serve()
    fake_graph.graph.reset_requests()
    # gitlab.yml: plain_url "https://avatars.intranet/avatar/%{hash}?s=%{size}&d=identicon"
    status, headers, body = await fetch(client, f"/avatar/{md5('P.Gupta@contoso.com ')}"
                                                "?s=96&d=identicon")
    assert (status, headers["X-Avatar-Source"], size_of(body)) == (200, "photo", (96, 96))
    assert fake_graph.graph.count("$filter=") == 0  # the index, not an address lookup
    for address in ("pradeep@contoso.com", "pradeep.gupta@contoso.onmicrosoft.com"):
        _, again, same = await fetch(client, f"/avatar/{md5(address)}?s=96&d=identicon")
        assert (again["ETag"], same) == (headers["ETag"], body)  # one person, one photo


async def test_gitlab_email_url_needs_no_index(aiohttp_client: Any, fake_graph: Any) -> None:
    # plain_url "https://avatars.intranet/avatar/%{email}/%{size}": GitLab escapes the
    # address (ERB::Util.url_encode), the UPN route takes it, off or on.
    client = await client_factory(aiohttp_client, {"graph.base_url": fake_graph.base_url},
                                  tokens=StaticTokenProvider("t"))()
    status, headers, body = await fetch(client, f"/avatar/{quote('p.gupta@contoso.com', safe='')}"
                                                "/80")
    assert (status, headers["X-Avatar-Source"], size_of(body)) == (200, "photo", (80, 80))


async def test_libravatar_sha256_with_a_suffix(serve: MakeClient) -> None:
    client = await serve()
    status, headers, body = await fetch(client, f"/avatar/{sha256('pradeep@contoso.com')}.png"
                                                "?s=80&d=mm", Accept="image/avif,image/webp")
    assert (status, headers["Content-Type"], size_of(body)) == (200, "image/png", (80, 80))
    assert headers["X-Avatar-Source"] == "photo"
    assert "Accept" not in headers.get("Vary", "")  # the suffix decides, not Accept
    status, headers, _ = await fetch(client, f"/avatar/{sha256('p.gupta@contoso.com').upper()}"
                                             ".jpg?s=80")
    assert (status, headers["Content-Type"]) == (200, "image/jpeg")


async def test_redmine_long_parameter_names_and_its_2x_srcset(serve: MakeClient) -> None:
    client = await serve()
    for size in (24, 48):  # size and size x 2
        status, headers, body = await fetch(client, f"/avatar/{md5('p.gupta@contoso.com')}"
                                                    f"?rating=PG&size={size}&default=identicon")
        assert (status, headers["X-Avatar-Source"], size_of(body)) == (200, "photo",
                                                                       (size, size))


async def test_discourse_download_gets_png_or_404(serve: MakeClient) -> None:
    # Discourse: /avatar/<md5>.png?s=<max>&d=404&reset_cache=<random>; it keeps what it gets.
    client = await serve()
    status, headers, body = await fetch(client, f"/avatar/{md5('p.gupta@contoso.com')}.png"
                                                "?s=360&d=404&reset_cache=x3Yb9")
    assert (status, headers["Content-Type"], size_of(body)) == (200, "image/png", (360, 360))
    status, headers, _ = await fetch(client, f"/avatar/{NOBODY}.png?s=360&d=404&reset_cache=Q")
    assert (status, headers["Cache-Control"]) == (404, "no-store")


async def test_bitbucket_jpg_suffix_and_a_fallback_url_get_mp_never_a_redirect(
        serve: MakeClient) -> None:
    # avatar.url.format.https=https://avatars.intranet/avatar/%1$s.jpg?s=%2$d&d=%3$s
    client = await serve()
    fallback = quote("https://bitbucket.intranet/static/default-avatar.png", safe="")
    status, headers, _ = await fetch(client, f"/avatar/{md5('pradeep@contoso.com')}.jpg"
                                             f"?s=48&d={fallback}")
    assert (status, headers["Content-Type"]) == (200, "image/jpeg")
    status, headers, body = await fetch(client, f"/avatar/{NOBODY}.jpg?s=48&d={fallback}")
    assert (status, headers["X-Avatar-Source"], "Location" in headers) == (200, "default", False)
    _, mp, same = await fetch(client, f"/avatar/{NOBODY}.jpg?s=48&d=mp")
    assert (mp["ETag"], same) == (headers["ETag"], body)


async def test_gitea_source_url_and_bitbuckets_unhashed_address(serve: MakeClient) -> None:
    client = await serve()
    # Gitea: GRAVATAR_SOURCE + the MD5, then ?d=identicon&s=<size>.
    status, headers, body = await fetch(client, f"/avatar/{md5('pradeep@contoso.com')}"
                                                "?d=identicon&s=56")
    assert (status, headers["X-Avatar-Source"], size_of(body)) == (200, "photo", (56, 56))
    # Bitbucket: avatar.url.format.https=https://avatars.intranet/avatar/%4$s/%2$d
    status, headers, _ = await fetch(client, "/avatar/p.gupta@contoso.com/64")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert (await fetch(client, "/avatar//64"))[0] == 404  # a user without an address


# -- hashes nobody has -----------------------------------------------------------------

async def test_an_unknown_hash_gets_its_default_from_the_hash_alone_without_graph(
        serve: MakeClient, fake_graph: Any) -> None:
    client = await serve()
    fake_graph.graph.reset_requests()
    other = md5("someone.else@contoso.com")
    answers = {}
    for default in ("mp", "identicon", "blank", "initials", "monsterid"):
        status, headers, body = await fetch(client, f"/avatar/{NOBODY}?d={default}")
        assert (status, headers["X-Avatar-Source"], size_of(body)) == (200, "default", (80, 80))
        assert headers["Cache-Control"] == "public, max-age=300"
        answers[default] = body
    assert answers["initials"] == answers["monsterid"] == answers["mp"]  # no name: mp
    assert Image.open(io.BytesIO(answers["blank"])).getextrema()[3] == (0, 0)  # transparent
    _, _, again = await fetch(client, f"/avatar/{NOBODY}?d=identicon")
    _, _, theirs = await fetch(client, f"/avatar/{other}?d=identicon")
    assert again == answers["identicon"] != theirs  # the hash's own pattern
    _, _, mp_other = await fetch(client, f"/avatar/{other}")  # mp: the same for everyone
    assert mp_other == answers["mp"]
    assert (await fetch(client, f"/avatar/{NOBODY}?d=404"))[0] == 404
    assert fake_graph.graph.requests == []


async def test_a_person_without_a_photo_gets_initials_or_the_default(
        serve: MakeClient) -> None:
    client = await serve()
    diego = md5("diego.siciliani@contoso.com")
    _, headers, _ = await fetch(client, f"/avatar/{diego}?s=64&d=initials")
    assert headers["X-Avatar-Source"] == "initials"
    _, headers, _ = await fetch(client, f"/avatar/{diego}?s=64&d=identicon")
    assert headers["X-Avatar-Source"] == "default"
    assert (await fetch(client, f"/avatar/{diego}?s=64&d=404"))[0] == 404


async def test_forcedefault_shows_the_default_even_for_a_photo(
        serve: MakeClient, fake_graph: Any) -> None:
    client = await serve()
    pradeep = md5("pradeep@contoso.com")
    fake_graph.graph.reset_requests()
    _, headers, _ = await fetch(client, f"/avatar/{pradeep}?f=y&d=identicon")
    assert headers["X-Avatar-Source"] == "default" and fake_graph.graph.requests == []
    _, headers, _ = await fetch(client, f"/avatar/{pradeep}?forcedefault=y&default=initials")
    assert headers["X-Avatar-Source"] == "initials"  # the person's, never the photo
    assert photo_calls(fake_graph) == 0


# -- policy on the person found --------------------------------------------------------

async def test_a_blocked_person_by_hash_never_gets_the_photo(
        serve: MakeClient, fake_graph: Any) -> None:
    client = await serve(security__blocked=["pradeep.gupta@contoso.onmicrosoft.com"])
    for query in ("d=initials", "d=identicon", "s=240"):
        status, headers, _ = await fetch(client, f"/avatar/{md5('pradeep@contoso.com')}?{query}")
        assert status == 200 and headers["X-Avatar-Source"] != "photo", query
    assert (await fetch(client, f"/avatar/{md5('p.gupta@contoso.com')}?d=404"))[0] == 404
    assert photo_calls(fake_graph) == 0


@pytest.mark.parametrize("rule", [{"security__allowed_domains": ["fabrikam.com"]},
                                  {"security__allow_guests": False}])
async def test_a_refused_person_looks_like_a_hash_nobody_has(
        serve: MakeClient, fake_graph: Any, rule: dict[str, Any]) -> None:
    client = await serve(**rule)
    guest = fake_graph.graph.find(lambda p: "#EXT#" in p.upn)
    refused = md5(guest.upn)
    _, unknown, mp_body = await fetch(client, f"/avatar/{NOBODY}?d=mp&s=48")
    for query in ("d=mp&s=48", "d=initials&s=48"):
        status, headers, body = await fetch(client, f"/avatar/{refused}?{query}")
        assert (status, headers["X-Avatar-Source"], headers["ETag"], body) == (
            200, "default", unknown["ETag"], mp_body), query
    assert (await fetch(client, f"/avatar/{refused}?d=404"))[0] == 404
    assert photo_calls(fake_graph) == 0


async def test_every_lookup_costs_a_token_hit_or_miss(serve: MakeClient) -> None:
    client = await serve(security__rate_limit_per_second=0.001, security__rate_limit_burst=12)
    known = md5("pradeep@contoso.com")
    answers = [await fetch(client, f"/avatar/{hash_}?s=48")
               for hash_ in [NOBODY] * 6 + [known] * 14]
    limited = [headers for _, headers, _ in answers if headers["Cache-Control"] == "no-store"]
    assert limited, "lookups never ran out"
    # Over the rate, the same plain tile for every hash: nothing to tell them apart.
    assert {h["X-Avatar-Source"] for h in limited} == {"default"}
    assert {h["X-Avatar-Stand-In"] for h in limited} == {"rate-limited"}
    assert len({h["ETag"] for h in limited}) == 1
    assert answers[-1][1]["Cache-Control"] == "no-store"  # memory hits ran out too


async def test_another_websites_page_gets_mp_rather_than_a_telling_404(
        serve: MakeClient) -> None:
    client = await serve()
    status, headers, _ = await fetch(client, f"/avatar/{NOBODY}?d=404",
                                     **{"Sec-Fetch-Site": "cross-site",
                                        "Origin": "https://elsewhere.example"})
    assert (status, headers["X-Avatar-Source"]) == (200, "default")
    assert headers["Cache-Control"].startswith("private")


# -- the index behind it ---------------------------------------------------------------

async def test_the_index_is_shared_through_redis_and_kept_current(
        serve_redis: MakeClient, fake_graph: Any) -> None:
    one = await serve_redis(directory__sync_interval_seconds=1)
    two = await serve_redis(directory__sync_interval_seconds=1)  # its replica: no full sync
    assert fake_graph.graph.count("$select=id,mail") == 1
    fake_graph.graph.add(FakePerson(
        "n.comer@contoso.onmicrosoft.com", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "New Comer",
        photo=portrait(240, 240, "#123", "#456", "#789"), mail="newcomer@contoso.com"))
    deadline = time.monotonic() + 30  # a round every second, on whichever replica
    while (await fetch(two, f"/avatar/{md5('newcomer@contoso.com')}"))[1][
            "X-Avatar-Source"] != "photo":
        assert time.monotonic() < deadline, "the newcomer never reached the index"
        await fetch(one, "/healthz")
        await asyncio.sleep(0.2)
    assert fake_graph.graph.count("$select=id,mail") == 1  # delta rounds since


async def test_an_unfinished_index_answers_misses_for_a_minute_only(
        serve: MakeClient, fake_graph: Any) -> None:
    fake_graph.graph.denied = {"User.Read.All"}  # the index cannot be built
    client = await serve()
    _, headers, _ = await fetch(client, f"/avatar/{md5('pradeep@contoso.com')}")
    assert (headers["X-Avatar-Source"], headers["Cache-Control"]) == (
        "default", "public, max-age=60")


# -- switches and shapes ---------------------------------------------------------------

async def test_hash_urls_are_off_unless_directory_gravatar(
        aiohttp_client: Any, fake_graph: Any) -> None:
    client = await client_factory(aiohttp_client, {"graph.base_url": fake_graph.base_url},
                                  tokens=StaticTokenProvider("t"))()
    fake_graph.graph.reset_requests()
    status, _, _ = await fetch(client, f"/avatar/{md5('pradeep@contoso.com')}?s=80")
    assert status == 404 and fake_graph.graph.requests == []


def test_gravatar_refuses_signed_urls_and_needs_a_key() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env={}, overrides={**ON, "security.url_signing_keys": ["k" * 32]})
    assert any(p.startswith("directory.gravatar: cannot be used with security.url_signing_keys")
               for p in refused.value.problems)
    with pytest.raises(ConfigError) as keyless:
        load_settings(env={}, overrides={"directory.gravatar": True})
    assert keyless.value.problems[0].startswith("directory.index_key: required")
    with pytest.raises(ConfigError) as short:
        load_settings(env={}, overrides={**ON, "directory.index_key": "short"})
    assert "short" not in str(short.value)  # a secret is never shown
    assert load_settings(env={"AVATARPROXY_DIRECTORY_GRAVATAR": "true",
                              "AVATARPROXY_DIRECTORY_INDEX_KEY": KEY}).directory.gravatar
    assert "***" in repr(load_settings(env={}, overrides=ON).directory)


async def test_the_two_shapes_are_told_apart_by_their_segments(serve: MakeClient) -> None:
    client = await serve()
    _, headers, _ = await fetch(client, "/avatar/pradeep.gupta@contoso.onmicrosoft.com/48")
    assert headers["X-Avatar-Source"] == "photo"  # today's URLs work as before
    assert (await fetch(client, f"/avatar/{NOBODY}/48"))[0] == 400  # a hash is no UPN
    for bad in (f"{NOBODY}.gif", NOBODY[:-1], NOBODY + "0", "z" * 32):
        assert (await fetch(client, f"/avatar/{bad}"))[0] == 404, bad  # no such route
    for query in ("s=0", "s=2000", "s=big", "s=8&size=8", "d=mp&d=404"):
        status, headers, _ = await fetch(client, f"/avatar/{NOBODY}?{query}")
        assert (status, headers["Cache-Control"]) == (400, "no-store"), query
    async with client.head(f"/avatar/{md5('pradeep@contoso.com')}?s=32") as head:
        assert head.status == 200 and head.headers["X-Avatar-Source"] == "photo"
    async with client.options(f"/avatar/{NOBODY}") as preflight:
        assert preflight.status == 204


# -- review of issue 16 -----------------------------------------------------------------

def answer_of(status: int, headers: Any, body: bytes) -> tuple[Any, ...]:
    """Everything a client can compare: status, the headers that vary, the bytes."""
    return (status, headers.get("X-Avatar-Source"), headers.get("Cache-Control"),
            headers.get("ETag"), headers.get("Content-Type"), body)


@pytest.mark.parametrize("outage", ["503", "breaker open", "throttled"])
async def test_while_graph_fails_a_person_with_a_photo_gets_a_short_lived_default(
        serve: MakeClient, fake_graph: Any, outage: str) -> None:
    client = await serve()
    if outage == "503":
        fake_graph.graph.inject(503, times=50, path_contains="/photo")
    elif outage == "breaker open":
        fake_graph.graph.inject(503, times=50)
        for n in range(6):  # failures in a row open the circuit breaker
            await fetch(client, f"/avatar/someone{n}@contoso.com/48")
    else:
        fake_graph.graph.inject(429, times=50, headers={"Retry-After": "120"})
    pradeep = md5("pradeep@contoso.com")
    for default in ("mp", "identicon"):
        status, headers, _ = await fetch(client, f"/avatar/{pradeep}?s=48&d={default}")
        # As /avatar/{object-id} answers "Graph unavailable": asked again within a minute.
        assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
            200, "default", "public, max-age=60"), default
    _, by_id, _ = await fetch(client, f"/avatar/{PRADEEP}/48")
    assert (by_id["X-Avatar-Source"], by_id["Cache-Control"]) == ("initials",
                                                                  "public, max-age=60")
    _, headers, _ = await fetch(client, f"/avatar/{pradeep}?s=48&d=initials")
    assert (headers["X-Avatar-Source"], headers["Cache-Control"]) == ("initials",
                                                                      "public, max-age=60")


@pytest.mark.parametrize("state", ["blocked list unresolved", "blocked too", "index not ready"])
async def test_a_refused_person_is_answered_exactly_as_nobody_in_every_state(
        serve: MakeClient, fake_graph: Any, state: str) -> None:
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn)
    if state == "blocked list unresolved":  # Graph cannot resolve the list's entries
        fake_graph.graph.inject(503, times=10_000,
                                path_contains="$select=id,userPrincipalName,mail,proxyAddresses")
    blocked = [guest.upn if state == "blocked too" else "adele.vance@contoso.com"]
    client = await serve(security__allow_guests=False, security__blocked=blocked)
    if state == "index not ready":  # a round still under way: misses are "not yet"
        client.server.app[HANDLING].hashes.index.ready = False
    for query in ("s=48&d=initials", "s=48&d=mp", "s=48&d=identicon", "s=48&d=404",
                  "s=64&d=blank"):
        refused = answer_of(*await fetch(client, f"/avatar/{md5(guest.upn)}?{query}"))
        nobody = answer_of(*await fetch(client, f"/avatar/{NOBODY}?{query}"))
        if "identicon" in query:  # drawn from each hash: only the headers can agree
            refused, nobody = refused[:3] + refused[4:5], nobody[:3] + nobody[4:5]
        assert refused == nobody, query
    assert photo_calls(fake_graph) == 0


async def test_a_410_on_a_photo_call_is_not_cached_as_no_photo(
        serve: MakeClient, fake_graph: Any) -> None:
    client = await serve(directory__gravatar=False, graph__max_retries=0)
    fake_graph.graph.inject(410, times=1, path_contains="/photo")  # a gateway's, say
    _, headers, _ = await fetch(client, "/avatar/pradeep.gupta@contoso.onmicrosoft.com/48")
    assert (headers["X-Avatar-Source"], headers["Cache-Control"]) == ("initials",
                                                                      "public, max-age=60")
    _, headers, _ = await fetch(client, "/avatar/pradeep.gupta@contoso.onmicrosoft.com/48")
    assert headers["X-Avatar-Source"] == "photo"


async def test_suffixes_in_any_case_and_a_jpg_default_is_a_jpeg(serve: MakeClient) -> None:
    client = await serve()
    pradeep = md5("pradeep@contoso.com")
    for suffix, content_type in ((".PNG", "image/png"), (".Jpg", "image/jpeg"),
                                 (".jpeg", "image/jpeg"), (".JPEG", "image/jpeg")):
        status, headers, _ = await fetch(client, f"/avatar/{pradeep}{suffix}?s=40")
        assert (status, headers["Content-Type"]) == (200, content_type), suffix
    for default in ("mp", "identicon"):
        status, headers, body = await fetch(client, f"/avatar/{NOBODY}.jpg?s=40&d={default}")
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        assert Image.open(io.BytesIO(body)).format == "JPEG"
    _, headers, _ = await fetch(client, f"/avatar/{NOBODY}.jpg?s=40&d=blank")
    assert headers["Content-Type"] == "image/png"  # transparent: JPEG has no alpha


async def test_a_hash_miss_costs_what_an_unknown_address_costs(serve: MakeClient) -> None:
    # /avatar/{unknown address}/{size}: metadata, profile and the address lookup, 3 tokens.
    client = await serve(security__rate_limit_per_second=0.001, security__rate_limit_burst=6)
    answers = [await fetch(client, f"/avatar/{NOBODY}?s=48") for _ in range(3)]
    assert [h["Cache-Control"] for _, h, _ in answers] == [
        "public, max-age=300", "public, max-age=300", "no-store"]


async def test_an_unexpected_error_on_a_hash_is_a_picture_and_counted(
        serve: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await serve()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(HashAvatars, "answer", broken)

    def internal() -> float:
        metrics.flush()  # this process's counts, as its next flush would
        return REGISTRY.get_sample_value("avatarproxy_initials_fallback_total",
                                         {"reason": "internal"}) or 0.0

    before = internal()
    status, headers, _ = await fetch(client, f"/avatar/{NOBODY}?s=48")
    assert (status, headers["Cache-Control"]) == (200, "no-store")
    assert internal() == before + 1
