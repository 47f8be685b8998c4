"""Fault injection with real parts: the fake Graph throttles, fails, stalls and
sends bad bytes; the service keeps answering images (never a 5xx) and the
Graph traffic is exactly what the failure policy allows."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from appclient import MakeClient, get
from PIL import Image

from avatarproxy.cache import SCHEMA_VERSION, AvatarCache
from avatarproxy.config import load_settings
from avatarproxy.demo.photos import portrait
from avatarproxy.errors import GraphUnavailable, Overloaded
from avatarproxy.graph import throttle
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.graph.client import GraphClient
from avatarproxy.graph.throttle import GraphGate
from avatarproxy.limits import LoadLimits
from avatarproxy.models import Subject
from avatarproxy.redis.coordination import Coordination, SharedKeys
from avatarproxy.sizing import HD_SIZES
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
MEGAN = "megan.bowen@contoso.com"
APP_SCOPE = "Application/ApplicationAndTenant/app-id/tenant-id"
KEYS = AvatarCache(load_settings(env={}).cache, [])  # key names only
SHARED = SharedKeys(load_settings(env={}).redis.key_prefix, SCHEMA_VERSION)


def downloads(fake_graph: Any, who: str = "") -> int:
    return fake_graph.graph.count(lambda r: who in r.raw_path and r.raw_path.endswith("$value"))


async def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_app_wide_throttle_pauses_every_call_on_every_replica(
        make_client: MakeClient, fake_graph: Any, redis_url: str) -> None:
    one, two = await make_client(), await make_client()
    fake_graph.graph.inject(429, headers={"Retry-After": "30", "x-ms-throttle-scope": APP_SCOPE})
    status, headers, _ = await get(one, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"
    assert fake_graph.graph.count() == 1  # Retry-After 30 s is too long to wait: no retry
    for client, person in ((one, ALEX), (two, ALEX), (two, MEGAN)):
        status, headers, _ = await get(client, f"/avatar/{person}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert headers["Cache-Control"] == "public, max-age=60"
    assert fake_graph.graph.count() == 1  # nobody called Graph inside the window
    store = aioredis.Redis.from_url(redis_url)
    try:  # the throttled answer is not remembered as "no photo"
        assert await store.get(KEYS.meta_key(Subject(ADELE))) is None
        assert 29 < await store.pttl(SHARED.pause("app")) / 1000 <= 30
    finally:
        await store.aclose()


async def test_short_mailbox_throttle_is_waited_out_then_retried_once(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    fake_graph.graph.inject(429, path_contains="$value", headers={
        "Retry-After": "0.3", "x-ms-throttle-scope": "Mailbox/ApplicationAndMailbox/a/b"})
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    requests = fake_graph.graph.requests
    assert [r.raw_path.endswith("$value") for r in requests] == [False, True, True]
    assert requests[2].at - requests[1].at >= 0.3  # nothing inside the Retry-After window


async def test_throttles_of_several_people_without_a_scope_pause_the_process(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    fake_graph.graph.inject(429, times=2, headers={"Retry-After": "30"})
    for person in (ADELE, ALEX):
        _, headers, _ = await get(client, f"/avatar/{person}/48")
        assert headers["X-Avatar-Source"] == "initials"
    assert fake_graph.graph.count() == 2
    status, headers, _ = await get(client, f"/avatar/{MEGAN}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert fake_graph.graph.count() == 2


async def test_one_persons_throttle_without_scope_pauses_only_that_person(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    fake_graph.graph.inject(429, headers={"Retry-After": "30"})
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "initials"
    _, headers, _ = await get(client, f"/avatar/{ADELE}/96")
    assert headers["X-Avatar-Source"] == "initials"
    assert fake_graph.graph.count() == 1
    _, headers, _ = await get(client, f"/avatar/{ALEX}/48")
    assert headers["X-Avatar-Source"] == "photo"


async def test_calls_to_one_mailbox_go_four_at_once_and_directory_calls_are_not_held(
        fake_graph: Any) -> None:
    # Exchange allows an app 4 concurrent requests per mailbox (FACTS.md); a person's
    # photos live in their mailbox, their names in the directory.
    graph, seen = fake_graph.graph, {"photo": [0, 0], "names": [0, 0]}  # answered, peak
    original = graph.answer
    graph.latency = 0.05

    def answer(root: str, segments: list[str], query: Any) -> web.Response:
        kind = "photo" if {"photo", "photos"} & set(segments) else "names"
        arrived = graph.count(lambda r: ("/photo" in r.path) == (kind == "photo"))
        seen[kind][1] = max(seen[kind][1], arrived - seen[kind][0])
        seen[kind][0] += 1
        return original(root, segments, query)

    graph.answer = answer
    settings = load_settings(env={}, overrides={"graph.base_url": fake_graph.base_url})
    async with aiohttp.ClientSession() as session:
        client = GraphClient(settings.graph, StaticTokenProvider("t"), session)
        await asyncio.gather(client.photo_meta(Subject(ADELE)),
                             *(client.photo_bytes(Subject(ADELE), s) for s in HD_SIZES))
        await asyncio.gather(*(client.profile(Subject(ADELE)) for _ in range(8)))
        assert len(client.mailboxes) == 0  # an idle mailbox is not remembered
    assert (seen["photo"][1], seen["names"][1]) == (4, 8)


async def test_a_shorter_throttle_pause_from_another_replica_keeps_the_longer_one(
        redis_url: str) -> None:
    settings = load_settings(env={}, overrides={"cache.redis_url": redis_url})
    shared = Coordination.connect(settings.redis, SCHEMA_VERSION)
    assert shared.link is not None
    one, two, three = (GraphGate(settings.graph, shared.pauses) for _ in range(3))
    try:
        # Two replicas' calls were in flight together; Graph throttles both, the
        # second answer with a shorter Retry-After than the first.
        for gate, seconds in ((one, 30.0), (two, 1.0)):
            await gate.failed(ADELE, GraphUnavailable("429", retry_after=seconds,
                                                      throttle_scope=APP_SCOPE), attempt=0)
        # A third replica, which saw neither answer, holds off for the longer pause.
        with pytest.raises(GraphUnavailable) as paused:
            await three.admit(MEGAN)
        assert paused.value.retry_after is not None and paused.value.retry_after > 25
    finally:
        await shared.link.close()


async def test_circuit_breaker_stops_calling_a_failing_graph_then_probes_it(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(graph__breaker_threshold=2, graph__breaker_cooldown_seconds=0.4,
                               graph__max_retries=0)
    # aiohttp resends once on a reset keep-alive connection: drop both tries.
    fake_graph.graph.fault("drop", times=2, path_contains=ADELE)
    fake_graph.graph.inject(503, times=1, path_contains=ALEX)
    for person in (ADELE, ALEX):
        status, headers, _ = await get(client, f"/avatar/{person}/48")
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert headers["Cache-Control"] == "public, max-age=60"
    opened = time.monotonic()
    calls = fake_graph.graph.count()
    status, headers, _ = await get(client, f"/avatar/{MEGAN}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert fake_graph.graph.count() == calls  # open: Graph is left alone
    await asyncio.sleep(0.4 - (time.monotonic() - opened))  # the cooldown is time, not an event
    status, headers, _ = await get(client, f"/avatar/{MEGAN}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")  # the probe succeeded
    assert fake_graph.graph.count() == calls + 2  # metadata (the probe), then the photo


async def test_failed_calls_are_retried_with_backoff_a_bounded_number_of_times(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(graph__max_retries=2)
    fake_graph.graph.inject(503, times=3, path_contains="$value")
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert downloads(fake_graph) == 3
    fake_graph.graph.inject(503, times=1, path_contains="$value")
    _, headers, _ = await get(client, f"/avatar/{ALEX}/48")
    assert headers["X-Avatar-Source"] == "photo"


async def test_another_replicas_pause_reaches_a_gate_within_its_recheck_time(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A miss calls Graph twice (metadata, then the photo) and each call passes the
    # gate: the replicas' pauses are read once for both, not once per call.
    monkeypatch.setattr(throttle, "SHARED_RECHECK_SECONDS", 30.0)
    settings = load_settings(env={}, overrides={"cache.redis_url": redis_url})
    shared = Coordination.connect(settings.redis, SCHEMA_VERSION)
    assert shared.link is not None
    one, two = (GraphGate(settings.graph, shared.pauses) for _ in range(2))
    try:
        await two.admit(MEGAN)  # read: nothing paused
        await one.failed(ADELE, GraphUnavailable("429", retry_after=30.0,
                                                 throttle_scope=APP_SCOPE), attempt=0)
        await two.admit(MEGAN)  # the same read holds
        monkeypatch.setattr(throttle, "SHARED_RECHECK_SECONDS", 0.0)  # time passes
        with pytest.raises(GraphUnavailable) as paused:
            await two.admit(MEGAN)  # read again: the other replica's pause
        assert paused.value.retry_after is not None and paused.value.retry_after > 25
    finally:
        await shared.link.close()


@pytest.mark.parametrize("fault", ["corrupt", "truncated", "huge", "bomb", "not-image"])
async def test_bad_photo_bytes_are_never_served_nor_cached(
        make_client: MakeClient, fake_graph: Any, fault: str) -> None:
    client = await make_client()
    fake_graph.graph.fault(fault, path_contains="$value")
    status, headers, body = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"
    assert Image.open(io.BytesIO(body)).format == "PNG"
    assert downloads(fake_graph) == 1
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "photo"  # asked again, not cached as anything
    assert downloads(fake_graph) == 2


async def test_stale_metadata_is_served_at_once_and_refreshed_once_in_background(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__metadata_ttl_seconds=1)
    _, first, old_body = await get(client, f"/avatar/{ADELE}/48")
    fake_graph.graph.set_photo(ADELE, portrait(648, 648, "#000000", "#ff0000", "#00ff00"))
    fake_graph.graph.latency = 0.3  # the refresh is slow: stale answers must not wait for it
    await asyncio.sleep(1.05)  # let the metadata go stale
    began = time.monotonic()
    answers = await asyncio.gather(*(get(client, f"/avatar/{ADELE}/48") for _ in range(5)))
    assert time.monotonic() - began < 0.3
    assert all(h["ETag"] == first["ETag"] and b == old_body for _, h, b in answers)
    meta_calls = f"/v1.0/users/{ADELE}/photo"
    await wait_for(lambda: fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 2)
    fake_graph.graph.latency = 0
    for _ in range(50):  # the refresh lands in the cache right after Graph answers it
        _, headers, body = await get(client, f"/avatar/{ADELE}/48")
        if headers["ETag"] != first["ETag"]:
            break
        await asyncio.sleep(0.02)
    assert headers["ETag"] != first["ETag"] and body != old_body
    assert fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 2


async def test_stale_metadata_is_refreshed_once_per_ttl_by_the_fleet_not_once_per_process(
        make_client: MakeClient, fake_graph: Any) -> None:
    ttl = 2
    one = await make_client(cache__metadata_ttl_seconds=ttl)
    two = await make_client(cache__metadata_ttl_seconds=ttl)  # another process
    _, old, _ = await get(one, f"/avatar/{ADELE}/48")
    assert (await get(two, f"/avatar/{ADELE}/48"))[1]["ETag"] == old["ETag"]  # from Redis
    meta_calls = f"/v1.0/users/{ADELE}/photo"
    assert fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 1
    fake_graph.graph.set_photo(ADELE, portrait(648, 648, "#000000", "#ff0000", "#00ff00"))
    await asyncio.sleep(ttl + 0.1)  # both processes' memory copies go stale
    await get(one, f"/avatar/{ADELE}/48")  # stale, and refreshed behind it
    await wait_for(lambda: fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 2
                   and one.app[HANDLING].service.fetches_in_flight == 0)
    _, new, _ = await get(one, f"/avatar/{ADELE}/48")
    assert new["ETag"] != old["ETag"]
    # The other process finds the refresh in Redis behind its stale memory copy:
    # the new photo at once, and no metadata call of its own.
    _, headers, _ = await get(two, f"/avatar/{ADELE}/48")
    await wait_for(lambda: two.app[HANDLING].service.fetches_in_flight == 0)
    assert headers["ETag"] == new["ETag"]
    assert fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 2
    assert downloads(fake_graph) == 2  # the old photo, then the new one, once each


@pytest.mark.parametrize("metadata_delay", [0.0, 0.6], ids=["slow-download", "slow-metadata"])
async def test_slow_graph_gets_initials_that_are_not_stored_within_the_deadline(
        make_client: MakeClient, fake_graph: Any, metadata_delay: float) -> None:
    client = await make_client(server__request_deadline_seconds=0.3)
    meta_calls = f"/v1.0/users/{ADELE}/photo"
    if metadata_delay:  # past the deadline for sure, whatever the machine's load
        # (the metadata call comes first, so it takes this fault, not the download)
        fake_graph.graph.fault("slow", path_contains=meta_calls, delay=metadata_delay)
    fake_graph.graph.fault("slow", path_contains="$value", delay=1.0)
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Avatar-Stand-In"] == "deadline"  # for a cache in front
    # What was fetching when the deadline passed goes on and fills the cache. Where it
    # passed is the machine's to say: during the download (usually, with fast metadata),
    # or before the download began (the metadata still on its way, as it always is with
    # slow metadata): then the next request finds the metadata cached and begins the
    # download. Either way the requests meanwhile get the same stand-in, and one
    # metadata call and one download end in the photo: none was cut off and repeated.
    deadline = time.monotonic() + 10
    while True:
        status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
        if headers["X-Avatar-Source"] == "photo":
            break
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert (headers["Cache-Control"], headers["X-Avatar-Stand-In"]) == ("no-store",
                                                                            "deadline")
        assert time.monotonic() < deadline, "the photo never reached the cache"
        await asyncio.sleep(0.02)
    assert downloads(fake_graph) == 1
    assert fake_graph.graph.count(lambda r: r.raw_path == meta_calls) == 1


async def test_past_the_in_flight_cap_the_answer_is_immediate_uncached_initials(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(server__max_inflight=1)
    fake_graph.graph.fault("slow", path_contains=ADELE, delay=0.5)
    slow = asyncio.ensure_future(get(client, f"/avatar/{ADELE}/48"))
    await wait_for(lambda: fake_graph.graph.count() == 1)
    began = time.monotonic()
    status, headers, _ = await get(client, f"/avatar/{ALEX}/48")
    assert time.monotonic() - began < 0.3
    assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
        200, "initials", "no-store")
    assert headers["X-Avatar-Stand-In"] == "overload"
    assert fake_graph.graph.count(ALEX) == 0
    status, headers, _ = await slow
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")


async def test_past_the_in_flight_cap_avatars_already_held_are_still_served(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(server__max_inflight=1)
    status, headers, cached = await get(client, f"/avatar/{ALEX}/48")  # now in memory
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    fake_graph.graph.fault("slow", path_contains=ADELE, delay=0.5)
    slow = asyncio.ensure_future(get(client, f"/avatar/{ADELE}/48"))
    await wait_for(lambda: fake_graph.graph.count(ADELE) == 1)
    # The cap bounds waiting on Graph; a hit waits on nothing, so it is not refused.
    status, headers, body = await get(client, f"/avatar/{ALEX}/48")
    assert (status, headers["X-Avatar-Source"], body) == (200, "photo", cached)
    assert "no-store" not in headers["Cache-Control"]
    assert (await slow)[0] == 200


async def test_a_dead_holders_lock_expires_and_the_waiter_fetches_itself(
        make_client: MakeClient, fake_graph: Any, redis_url: str) -> None:
    client = await make_client()
    etag = fake_graph.graph.person(ADELE).media_etag
    lock = SHARED.lock(KEYS.source_key(Subject(ADELE), etag, 48))
    store = aioredis.Redis.from_url(redis_url)
    try:  # another replica took the download lock, then died
        await store.set(lock, "dead-holder", px=300)
    finally:
        await store.aclose()
    began = time.monotonic()
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert time.monotonic() - began >= 0.25  # it waited for the holder's result first
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert downloads(fake_graph) == 1


async def test_a_holder_slower_than_its_lock_time_keeps_the_lock_so_one_download_serves_all(
        make_client: MakeClient, fake_graph: Any) -> None:
    # The lock's time is graph.timeout_seconds; this download takes longer: its first
    # attempt times out, and the retry is slow too.
    settings = {"graph__timeout_seconds": 1.5, "cache__coalesce_wait_seconds": 30,
                "server__request_deadline_seconds": 30}
    one, two = await make_client(**settings), await make_client(**settings)
    fake_graph.graph.fault("slow", path_contains="$value", delay=2.5)
    fake_graph.graph.fault("slow", path_contains="$value", delay=1.0)
    first = asyncio.ensure_future(get(one, f"/avatar/{ADELE}/48"))
    await wait_for(lambda: downloads(fake_graph) == 1)  # one holds the lock and downloads
    status, headers, body = await get(two, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert (await first)[2] == body
    assert downloads(fake_graph) == 2  # one's timed-out attempt and its retry; none by two


async def test_while_throttled_a_stale_cached_photo_is_served_and_graph_left_alone(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__metadata_ttl_seconds=1)
    _, first, body = await get(client, f"/avatar/{ADELE}/48")
    await asyncio.sleep(1.05)  # let the metadata go stale
    calls = fake_graph.graph.count()
    fake_graph.graph.inject(429, headers={"Retry-After": "30", "x-ms-throttle-scope": APP_SCOPE})
    for _ in range(3):
        status, headers, again = await get(client, f"/avatar/{ADELE}/48")
        assert (status, headers["X-Avatar-Source"], again) == (200, "photo", body)
        assert headers["ETag"] == first["ETag"]
        await wait_for(lambda: fake_graph.graph.count() == calls + 1)
    assert fake_graph.graph.count() == calls + 1  # one refresh was throttled; then none


def test_image_work_past_its_cap_is_refused_not_queued() -> None:
    limits = LoadLimits(load_settings(env={}, overrides={
        "server.max_queued_images": 2}).server)
    with limits.image_job(), limits.image_job(), pytest.raises(Overloaded), limits.image_job():
        pass
    with limits.image_job():  # slots come back when the work is done
        assert limits.queued_images == 1
