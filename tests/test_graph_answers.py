"""Graph's answers as tenants really see them (FACTS.md): the error bodies of
users without a mailbox or with one on-premises, gzip-compressed JSON, a
gateway's HTML, Retry-After as a date, and redirects."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, web
from appclient import MakeClient, get

from avatarproxy.cache import SCHEMA_VERSION, AvatarCache
from avatarproxy.config import load_settings
from avatarproxy.demo.graphanswers import GATEWAY_HTML, REAL_ERRORS
from avatarproxy.graph.replies import read_capped
from avatarproxy.models import Subject
from avatarproxy.redis.coordination import SharedKeys

ADELE = "adele.vance@contoso.com"  # 648x648 photo
ALEX = "alex.wilber@contoso.com"  # 240x240 photo
KEYS = AvatarCache(load_settings(env={}).cache, [])  # key names only
SHARED = SharedKeys(load_settings(env={}).redis.key_prefix, SCHEMA_VERSION)
APP_SCOPE = "Application/ApplicationAndTenant/app-id/tenant-id"


def photo_calls(fake_graph: Any, who: str) -> int:
    return fake_graph.graph.count(lambda r: who in r.raw_path and "/photo" in r.raw_path)


@pytest.mark.parametrize("error", sorted(REAL_ERRORS))
async def test_each_real_no_photo_answer_gives_initials_asked_once_per_ttl(
        make_client: MakeClient, fake_graph: Any, error: str) -> None:
    fake_graph.graph.inject(error=error, times=100, path_contains=f"{ADELE}/photo")
    one, two = await make_client(), await make_client()
    for client in (one, one, two):
        status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        # "No photo" is an answer, not a failure: the long initials max-age.
        assert headers["Cache-Control"] == "public, max-age=300"
    assert photo_calls(fake_graph, ADELE) == 1  # cached for both replicas


async def test_gzip_json_is_read_and_its_cap_counts_decompressed_bytes(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")  # gzip metadata parsed
    # A profile of 300 KB (over the 256 KB JSON cap) compresses to a few KB:
    # the compressed Content-Length must not let it through.
    nobody = fake_graph.find(lambda p: p.photo is None and not p.placeholder)
    nobody.display_name = "Z" * 300_000
    status, headers, _ = await get(client, f"/avatar/{nobody.upn}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"  # Graph failed: asked again soon


@pytest.mark.parametrize("status_code", [502, 503, 504])
async def test_a_gateways_html_error_is_transient_and_not_cached(
        make_client: MakeClient, fake_graph: Any, redis_url: str, status_code: int) -> None:
    client = await make_client(graph__max_retries=0)
    fake_graph.graph.inject(status_code, html=GATEWAY_HTML)
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"
    store = aioredis.Redis.from_url(redis_url)
    try:
        assert await store.get(KEYS.meta_key(Subject(ADELE))) is None
    finally:
        await store.aclose()


async def test_retry_after_as_an_http_date_pauses_graph_for_that_long(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_graph.graph.inject(429, headers={"Retry-After": later})
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "initials"
    calls = fake_graph.graph.count()
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "initials"
    assert fake_graph.graph.count() == calls  # still inside the 30 s pause: Graph left alone


@pytest.mark.parametrize("value", ["inf", "1e999", "nan",
                                   "1 Jan 2030 00:00:00 +99999999999999999999"])
async def test_an_absurd_retry_after_is_a_plain_failure_never_a_5xx(
        make_client: MakeClient, fake_graph: Any, value: str) -> None:
    client = await make_client(graph__max_retries=0)
    fake_graph.graph.inject(429, headers={"Retry-After": value})
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"


async def test_a_far_future_retry_after_pauses_graph_for_five_minutes_at_most(
        make_client: MakeClient, fake_graph: Any, redis_url: str) -> None:
    client = await make_client(graph__max_retries=0)
    fake_graph.graph.inject(429, headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT",
                                          "x-ms-throttle-scope": APP_SCOPE})
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "initials"
    store = aioredis.Redis.from_url(redis_url)
    try:  # shared by every replica: an absurd date must not stop Graph for good
        assert 0 < await store.pttl(SHARED.pause("app")) <= 300_000
    finally:
        await store.aclose()


async def test_a_retry_after_date_in_the_past_still_counts_toward_the_breaker(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(graph__max_retries=0, graph__breaker_threshold=3)
    fake_graph.graph.inject(503, times=50, headers={
        "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    people = [p.upn for p in fake_graph.graph.people if p.photo is not None][:6]
    for upn in people:
        _, headers, _ = await get(client, f"/avatar/{upn.replace('#', '%23')}/48")
        assert headers["X-Avatar-Source"] == "initials"
    assert fake_graph.graph.count() <= 4  # the breaker opened after three failures


async def test_a_short_retry_after_date_is_waited_out_and_retried(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(graph__retry_max_wait_seconds=2.5)
    soon = email.utils.formatdate(time.time() + 1, usegmt=True)
    fake_graph.graph.inject(429, headers={"Retry-After": soon}, path_contains="$value")
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert fake_graph.graph.count("$value") == 2


@pytest.fixture
async def elsewhere() -> AsyncIterator[tuple[str, list[web.Request]]]:
    """Another server a redirect could point at; it records what reaches it."""
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=b"stolen")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/photo", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status_code", [301, 302, 307, 308])
async def test_a_redirect_is_transient_and_never_followed_with_the_token(
        make_client: MakeClient, fake_graph: Any,
        elsewhere: tuple[str, list[web.Request]], status_code: int) -> None:
    location, seen = elsewhere
    client = await make_client(graph__max_retries=0)
    fake_graph.graph.inject(status_code, headers={"Location": location},
                            path_contains="$value")
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"
    assert seen == []  # the bearer token never left for another host
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "photo"  # not remembered as "no photo"


@pytest.fixture
async def bodies() -> AsyncIterator[str]:
    """A server answering ``/{n}`` with n bytes: ``?chunked`` without a Content-Length,
    ``?gzip`` compressed (so its Content-Length is far below n)."""

    async def body(request: web.Request) -> web.StreamResponse:
        data = b"x" * int(request.match_info["n"])
        if "chunked" in request.query:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(data), 300):
                await response.write(data[start:start + 300])
            await response.write_eof()
            return response
        response = web.Response(body=data)
        if "gzip" in request.query:
            response.enable_compression(web.ContentCoding.gzip)
        return response

    app = web.Application()
    app.router.add_get("/{n}", body)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("form", ["", "?chunked", "?gzip"])
async def test_a_body_at_the_cap_is_whole_and_one_byte_more_is_refused(
        bodies: str, form: str) -> None:
    # A declared Content-Length over the cap is refused before reading a byte.
    kept_when_cut = 0 if form == "" else 1000
    async with ClientSession() as session:
        for size, expected in ((1000, (1000, False)), (1001, (kept_when_cut, True))):
            async with session.get(f"{bodies}/{size}{form}") as resp:
                body, cut = await read_capped(resp, 1000)
            assert (len(body), cut) == expected


async def test_a_media_etag_with_characters_no_header_can_carry_still_gives_the_photo(
        make_client: MakeClient, fake_graph: Any) -> None:
    person = fake_graph.graph.person(ALEX)
    person.media_etag = '"\ud800x\u00e9\n"'  # a lone surrogate, non-ASCII, a control
    client = await make_client()
    for _ in range(2):  # from Graph, then from the cache
        status, headers, _ = await get(client, f"/avatar/{ALEX}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "photo")
        assert headers["ETag"].isascii()
