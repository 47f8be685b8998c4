"""The service over a network, not loopback: each dependency's answers pass
through a fault proxy (tests/faultproxy.py) that splits them into TCP segments,
delays, resets, closes half-way and stalls them. Each test is a row of the
failure table in docs/operations.md (or a path that must simply work) seen over
that network."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from appclient import Client, MakeClient, get, with_settings
from faultproxy import INTERNET, NONE, FaultProxy, Faults
from photos import realistic_portrait
from PIL import Image, ImageStat

from avatarproxy.config import load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait
from avatarproxy.service import AvatarService
from avatarproxy.warm import Pacer, WarmStats, all_users, open_warmer
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"  # 648x648 photo
ADELE_COLOURS = ("#0b5394", "#6fa8dc", "#f6d7b0")
ALEX = "alex.wilber@contoso.com"  # 240x240 photo
ALEX_COLOURS = ("#38761d", "#b6d7a8", "#e0ac69")
LEE = "lee.gu@contoso.com"  # an Entra-only photo
JPEG = {"Accept": "image/jpeg"}
HD_SIZES = (48, 64, 96, 120, 240, 360, 432, 504, 648)


@pytest.fixture
def via_proxy(make_client: MakeClient, graph_proxy: FaultProxy) -> MakeClient:
    """``make_client`` whose Graph calls go through ``graph_proxy``."""
    return with_settings(make_client, graph__base_url=f"http://127.0.0.1:{graph_proxy.port}/v1.0")


def service(client: Client) -> AvatarService:
    return client.app[HANDLING].service


def mean_colour(body: bytes) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(Image.open(io.BytesIO(body)).convert("RGB")).mean)


def looks_like(body: bytes, master: Image.Image, size: int) -> bool:
    """Same picture as ``master`` scaled to ``size`` (by mean colour: whose photo it is)."""
    expected = mean_colour(_jpeg(master.resize((size, size))))
    return all(abs(a - b) < 12 for a, b in zip(mean_colour(body), expected, strict=True))


def downloads(fake_graph: Any) -> int:
    return fake_graph.graph.count("/$value")


# -- Graph: whole answers through segments and latency --------------------------

@pytest.mark.parametrize("size", [240, 96])
async def test_a_real_sized_photo_arriving_in_tcp_segments_is_served_as_the_photo(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any, size: int) -> None:
    # A 240 px portrait of tens of KB, sent in 1,400-byte segments a few ms apart:
    # reading "what has arrived so far" would cut it after the first segment.
    master = realistic_portrait(240, 240, *ALEX_COLOURS)
    fake_graph.graph.set_photo(ALEX, master)
    graph_proxy.faults = INTERNET
    client = await via_proxy()
    status, headers, body = await get(client, f"/avatar/{ALEX}/{size}", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert Image.open(io.BytesIO(body)).size == (size, size)
    assert looks_like(body, master, size)
    assert downloads(fake_graph) == 1
    assert graph_proxy.accepted >= 1


async def test_every_hd_size_and_an_entra_original_arrive_whole_over_a_slow_link(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any) -> None:
    master = realistic_portrait(648, 648, *ADELE_COLOURS, seed=1)
    fake_graph.graph.set_photo(ADELE, master)
    original = realistic_portrait(1200, 800, "#7f6000", "#ffd966", "#8d5524", seed=2)
    fake_graph.graph.set_photo(LEE, original)
    graph_proxy.faults = Faults(segment=1400, pause=0.001, latency=0.005)
    client = await via_proxy()
    for size in HD_SIZES:
        status, headers, body = await get(client, f"/avatar/{ADELE}/{size}", headers=JPEG)
        assert (status, headers["X-Avatar-Source"], size) == (200, "photo", size)
        assert Image.open(io.BytesIO(body)).size == (size, size)
        assert looks_like(body, master, size)
    assert fake_graph.graph.count(f"/users/{ADELE}/photos/") == len(HD_SIZES)
    status, headers, body = await get(client, f"/avatar/{LEE}/200", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert Image.open(io.BytesIO(body)).size == (200, 200)


async def test_profiles_and_address_lookups_arrive_whole_in_small_segments(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any) -> None:
    fake_graph.graph.add(FakePerson(
        "pradeep.gupta@contoso.onmicrosoft.com", "6d5c4b3a-2918-4776-8554-433221100fed",
        "Pradeep Gupta", photo=portrait(240, 240, "#222", "#999", "#c96"),
        mail="p.gupta@contoso.com", proxy_addresses=("smtp:pradeep@contoso.com",)))
    nobody = fake_graph.find(lambda p: p.photo is None and not p.placeholder)
    graph_proxy.faults = Faults(segment=64, pause=0.001)  # every JSON answer in pieces
    client = await via_proxy()
    status, headers, _ = await get(client, f"/avatar/{nobody.upn}/48")
    # A profile that parsed: "no photo" initials with the long max-age, not a failure's 60 s.
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=300"
    status, headers, _ = await get(client, "/avatar/pradeep@contoso.com/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert fake_graph.graph.count("$filter=mail") == 1


async def test_warm_reads_user_pages_and_batches_whole_through_segments(
        fake_graph: Any, graph_proxy: FaultProxy, idp_settings: dict[str, Any],
        redis_url: str) -> None:
    photo = portrait(96, 96, "#224466", "#88aacc", "#eeddcc")
    for n in range(45):
        fake_graph.graph.add(FakePerson(f"user{n:02d}@contoso.com",
                                        f"00000000-0000-4000-8000-{n:012d}",
                                        f"User Number {n:02d}", photo=photo if n % 3 else None))
    graph_proxy.faults = Faults(segment=512, pause=0.001)
    settings = load_settings(env={}, overrides={
        **idp_settings, "graph.base_url": f"http://127.0.0.1:{graph_proxy.port}/v1.0",
        "cache.redis_url": redis_url})
    pacer = Pacer(10_000)
    stats = WarmStats()
    async with open_warmer(settings, (48,), pacer) as warmer:
        await warmer.run(all_users(warmer.graph), stats, lambda s: None)
    people = fake_graph.graph.people
    with_photo = sum(p.photo is not None for p in people)
    assert (stats.seen, stats.photos, stats.initials, stats.failed) == (
        len(people), with_photo, len(people) - with_photo, 0)
    assert pacer.throttles == 0  # no page or batch misread as a failure
    assert fake_graph.graph.count(lambda r: r.method == "POST") >= 3  # $batch answers


async def test_tokens_come_whole_from_the_identity_provider_through_segments(
        make_client: MakeClient, fake_idp: Any, fake_graph: Any) -> None:
    proxy = await FaultProxy.start(fake_idp.port, Faults(segment=100, pause=0.002,
                                                         latency=0.01))
    try:
        authority = f"https://127.0.0.1:{proxy.port}/{fake_idp.tenant}"
        client = await make_client(auth__authority=authority)
        status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "photo")
        assert len(fake_idp.token_requests) == 1
        assert proxy.accepted >= 1  # discovery and token both went through the proxy
    finally:
        await proxy.close()


# -- Graph: answers that break off ------------------------------------------------

@pytest.mark.parametrize("fault", [Faults(reset_after=6000), Faults(close_after=6000)],
                         ids=["reset", "closed half-way"])
async def test_a_photo_cut_off_mid_body_is_transient_and_fetched_again(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any,
        fault: Faults) -> None:
    master = realistic_portrait(240, 240, *ALEX_COLOURS)
    fake_graph.graph.set_photo(ALEX, master)
    # One replica reads the metadata into Redis; then every new connection breaks
    # after 6,000 bytes, and another replica downloads a ~20 KB photo whose
    # Content-Length promised more.
    status, headers, _ = await get(await via_proxy(), f"/avatar/{ALEX}/48", headers=JPEG)
    assert headers["X-Avatar-Source"] == "photo"
    graph_proxy.faults = fault
    client = await via_proxy(graph__max_retries=1)
    status, headers, _ = await get(client, f"/avatar/{ALEX}/240", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"  # asked again soon
    assert fake_graph.graph.count(f"/users/{ALEX}/photos/240x240/$value") == 2  # retried
    graph_proxy.faults = NONE
    status, headers, body = await get(client, f"/avatar/{ALEX}/240", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert looks_like(body, master, 240)


async def test_a_stalled_graph_answers_the_browser_at_the_deadline_and_frees_everything(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any,
        redis_url: str) -> None:
    graph_proxy.faults = Faults(stall=True)
    client = await via_proxy(server__request_deadline_seconds=0.3, graph__timeout_seconds=3.0,
                             graph__max_retries=0)
    started = time.monotonic()
    answers = await asyncio.gather(*(get(client, f"/avatar/{ADELE}/48") for _ in range(5)))
    for status, headers, _ in answers:
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert headers["Cache-Control"] == "no-store"
    assert time.monotonic() - started < 2.0  # the deadline, not Graph's 3 s timeout
    graph = service(client).graph
    store = aioredis.Redis.from_url(redis_url)
    try:
        # Five browsers, one stalled fetch: one Graph slot, one coalescing lock.
        assert graph.in_flight == 1
        assert len(await store.keys("*lock*")) == 1
        # Given up at graph.timeout_seconds: the slot and the lock are free again.
        await asyncio.wait_for(service(client).drain(), 10)
        assert (graph.in_flight, service(client).fetches_in_flight) == (0, 0)
        assert await store.keys("*lock*") == []
    finally:
        await store.aclose()
    graph_proxy.faults = NONE
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()



# -- each Graph row of the failure table (docs/operations.md), over an internet-like link -------

async def test_each_graph_failure_row_holds_over_a_segmented_link(
        via_proxy: MakeClient, graph_proxy: FaultProxy, fake_graph: Any,
        fake_idp: Any) -> None:
    graph_proxy.faults = Faults(segment=700, pause=0.001, latency=0.002)
    graph = fake_graph.graph
    client = await via_proxy(graph__max_retries=0)

    async def avatar(upn: str) -> tuple[str, str]:
        status, headers, _ = await get(client, f"/avatar/{upn}/48", headers=JPEG)
        assert status == 200  # never a 5xx
        return headers["X-Avatar-Source"], headers["Cache-Control"]

    transient = ("initials", "public, max-age=60")
    graph.inject(403, path_contains=ADELE)  # permission missing
    assert await avatar(ADELE) == transient
    graph.inject(401, path_contains=ALEX)  # expired token: refreshed once, retried
    assert (await avatar(ALEX))[0] == "photo"
    assert len(fake_idp.token_requests) == 2
    graph.inject(429, headers={"Retry-After": "30"}, path_contains="megan")  # throttled
    assert await avatar("megan.bowen@contoso.com") == transient
    graph.inject(503, html=b"<html>busy</html>", path_contains="lynne")  # Graph down
    assert await avatar("lynne.robbins@contoso.com") == transient
    graph.fault("corrupt", path_contains="brien")  # bad photo bytes
    assert await avatar("o'brien@contoso.com") == transient
    # Not one of them was remembered as "no photo": the photo once Graph answers,
    # and short-lived initials while Megan's 30 s throttle pause lasts.
    for upn in (ADELE, "lynne.robbins@contoso.com", "o'brien@contoso.com"):
        assert (await avatar(upn))[0] == "photo"
    assert await avatar("megan.bowen@contoso.com") == transient


@pytest.mark.parametrize("fault", [Faults(reset_after=300), Faults(stall=True)],
                         ids=["reset", "stalled"])
async def test_an_identity_provider_lost_after_start_up_gives_uncached_initials(
        make_client: MakeClient, fake_idp: Any, fake_graph: Any, fault: Faults) -> None:
    proxy = await FaultProxy.start(fake_idp.port)
    try:
        authority = f"https://127.0.0.1:{proxy.port}/{fake_idp.tenant}"
        client = await make_client(auth__authority=authority,
                                   server__request_deadline_seconds=1.0)
        proxy.faults = fault  # after msal's discovery, before the first token
        proxy.cut()
        status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert headers["Cache-Control"] in ("public, max-age=60", "no-store")
        assert not fake_graph.graph.count("/$value")
    finally:
        await proxy.close()  # a stalled token request ends with the connection
