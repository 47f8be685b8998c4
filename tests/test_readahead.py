"""A Redis-tier hit in one round trip (``readahead``): the photo of the mediaEtag a
replica last saw is read with the metadata, and served only if the metadata still
names it. Real Redis (standalone, Sentinel, Cluster), the fault proxy's record of
what the service sent, no memory tier: every answer comes from Redis."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from appclient import MakeClient, get
from faultproxy import FaultProxy, Faults
from redisservers import Topology
from test_ops import scrape

from avatarproxy import imaging
from avatarproxy.cache import AvatarCache, RedisTier
from avatarproxy.config import load_settings
from avatarproxy.demo.photos import portrait
from avatarproxy.models import PhotoMeta, Subject
from avatarproxy.readahead import LastSeen
from avatarproxy.redis import connection
from avatarproxy.redis.link import RedisLink
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"
PATH = f"/avatar/{ADELE}/48"
JPEG = {"Accept": "image/jpeg"}
# Memory tier off; one test client is one address, which the misses limiter would slow.
REDIS_ONLY = {"cache.memory_max_bytes": 0, "security.rate_limit_per_second": 0.0}


def graph_calls(fake_graph: Any) -> int:
    return len(fake_graph.graph.requests)


async def test_a_redis_tier_hit_is_one_round_trip_carrying_metadata_and_photo(
        make_client: MakeClient, redis_proxy: FaultProxy, fake_graph: Any) -> None:
    client = await make_client(**REDIS_ONLY,
                               **{"cache.redis_url": f"redis://127.0.0.1:{redis_proxy.port}/0"})
    _, _, first = await get(client, PATH, headers=JPEG)  # a miss: fetched, kept in Redis
    calls, sent = graph_calls(fake_graph), len(redis_proxy.requests)
    status, headers, body = await get(client, PATH, headers=JPEG)
    assert (status, headers["X-Avatar-Source"], body) == (200, "photo", first)
    assert graph_calls(fake_graph) == calls
    # Whatever else the service sends (its purge subscription) never names Adele.
    hers = [r for r in redis_proxy.requests[sent:] if ADELE.encode() in r]
    assert len(hers) == 1, hers
    assert hers[0].count(b"GET") == 2 and b":meta:{" in hers[0] and b":img:{" in hers[0]


@pytest.fixture(params=["redis", "redis_sentinel", "redis_cluster"])
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings that reach Redis as each kind of deployment, emptied first."""
    if request.param == "redis":
        return {"cache.redis_url": request.getfixturevalue("redis_url")}
    topology: Topology = request.getfixturevalue(request.param)
    topology.flush()
    return dict(topology.overrides)


def another_replica(deployment: dict[str, Any]) -> AvatarCache:
    """The Redis tier as another replica writes it."""
    settings = load_settings(env={}, overrides=deployment)
    return AvatarCache(settings.cache, [RedisTier(RedisLink(connection.connect(settings.redis)))],
                       settings.redis.key_prefix)


async def test_a_photo_changed_by_another_replica_is_never_served_in_its_old_version(
        make_client: MakeClient, fake_graph: Any, deployment: dict[str, Any]) -> None:
    one = await make_client(**REDIS_ONLY, **deployment)
    _, _, old = await get(one, PATH, headers=JPEG)  # kept in Redis; `one` saw its mediaEtag
    calls = graph_calls(fake_graph)
    _, headers, hit = await get(one, PATH, headers=JPEG)
    assert (headers["X-Avatar-Source"], hit, graph_calls(fake_graph)) == ("photo", old, calls)
    assert one.app[HANDLING].service.health()["redis"] == "ok"  # the pipeline went through

    # Adele uploads a new photo; another replica refreshes her metadata in Redis.
    new_etag = fake_graph.graph.set_photo(ADELE, portrait(648, 648, "#7f0000", "#ff8080",
                                                          "#003300"))
    other = another_replica(deployment)
    subject = Subject(ADELE)
    seen = await other.get_meta(subject)
    assert seen is not None and seen.media_etag != new_etag
    await other.put_meta(subject, replace(seen, media_etag=new_etag, fetched_at=time.time()))
    # The version `one` last saw is still there to be read ahead: images are immutable.
    old_key = other.photo_key(subject, seen.media_etag, 48, "jpeg", imaging.RENDERER_VERSION)
    assert await other.get_image(old_key) == old

    _, headers, new = await get(one, PATH, headers=JPEG)
    assert headers["X-Avatar-Source"] == "photo" and new != old
    assert graph_calls(fake_graph) == calls + 1  # the new version's download
    fresh = await make_client(**REDIS_ONLY, **deployment)  # never saw the old version
    _, fresh_headers, fresh_body = await get(fresh, PATH, headers=JPEG)
    assert (fresh_headers["ETag"], fresh_body) == (headers["ETag"], new)
    await other.close()


def test_last_seen_keeps_a_bounded_number_of_people_forgetting_the_least_recently_seen(
        ) -> None:
    seen = LastSeen(kept=2)
    people = [Subject(f"p{n}@contoso.com") for n in range(3)]
    metas = [PhotoMeta(has_photo=True, media_etag=f'"E{n}"') for n in range(3)]
    seen.saw(people[0], metas[0])
    seen.saw(people[1], metas[1])
    seen.saw(people[0], metas[0])  # p0 again: p1 is now the least recently seen
    seen.saw(people[2], metas[2])
    assert [seen.meta(p) for p in people] == [metas[0], None, metas[2]]
    seen.saw(people[2], PhotoMeta(has_photo=False))  # no photo: nothing to read ahead
    assert seen.meta(people[2]) is None


async def test_a_purge_while_graph_is_asked_is_never_undone_by_the_photo_read_ahead(
        make_client: MakeClient, fake_graph: Any, redis_url: str) -> None:
    deployment = {"cache.redis_url": redis_url}
    client = await make_client(**REDIS_ONLY, **deployment)
    await get(client, PATH, headers=JPEG)  # kept in Redis; the process saw her mediaEtag
    other, subject = another_replica(deployment), Subject(ADELE)
    # Her metadata's stale TTL (7 days) ran out, her photo's (30 days) did not: the
    # next request reads the photo ahead, finds no metadata and asks Graph.
    plain = aioredis.Redis.from_url(redis_url)
    assert await plain.delete(other.meta_key(subject)) == 1
    await plain.aclose()
    graph = fake_graph.graph
    asked, downloads = graph.count(lambda r: "/photo" in r.raw_path), graph.count("$value")
    graph.gate.clear()
    answer = asyncio.create_task(get(client, PATH, headers=JPEG))
    async with graph.arrived:  # her metadata asked for, and held
        await graph.arrived.wait_for(lambda: graph.count(lambda r: "/photo" in r.raw_path
                                                         and "$value" not in r.raw_path)
                                     > asked - downloads)
    assert await other.purge(subject) >= 1  # an operator's takedown, while Graph answers
    graph.gate.set()
    status, headers, _ = await answer
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")  # Graph still has it
    # Not the bytes Redis held before the purge: downloaded anew, and kept anew.
    assert graph.count("$value") == downloads + 1
    await other.close()


def lookups(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    """``avatarproxy_cache_lookups_total`` between two scrapes, by ``tier result``."""
    return {" ".join(dict(labels)[k] for k in ("tier", "result")): after[name, labels]
            - before.get((name, labels), 0.0)
            for name, labels in after if name == "avatarproxy_cache_lookups_total"
            and after[name, labels] != before.get((name, labels), 0.0)}


async def test_cache_lookups_count_each_key_the_answer_needed_once(
        make_client: MakeClient, redis_proxy: FaultProxy, fake_graph: Any) -> None:
    deployment = {"cache.redis_url": f"redis://127.0.0.1:{redis_proxy.port}/0"}
    client = await make_client(**REDIS_ONLY, **deployment)
    await get(client, PATH, headers=JPEG)
    before = await scrape(client)
    await get(client, PATH, headers=JPEG)  # a Redis-tier hit: metadata and photo
    after = await scrape(client)
    # Each looked for in memory first (which keeps nothing here), then in Redis.
    assert lookups(before, after) == {"memory miss": 2, "redis hit": 2}

    # Another replica saw a new photo and rendered it: the guess (the old photo) was
    # read with the metadata, but the answer needed the new photo only.
    subject, other = Subject(ADELE), another_replica(deployment)
    seen = await other.get_meta(subject)
    assert seen is not None
    await other.put_meta(subject, replace(seen, media_etag='"new"', fetched_at=time.time()))
    new_key = other.photo_key(subject, '"new"', 48, "jpeg", imaging.RENDERER_VERSION)
    await other.put_image(new_key, b"the new photo", owner=subject)
    await other.close()
    after = await scrape(client)  # (the other replica's lookups count in this process)
    _, _, body = await get(client, PATH, headers=JPEG)
    assert body == b"the new photo"
    later = await scrape(client)
    assert lookups(after, later) == {"memory miss": 2, "redis hit": 2}

    # Redis fails: each key the answer needed, one error (the metadata, the photo,
    # its kept source), then Graph.
    redis_proxy.faults = Faults(reset_after=0)
    redis_proxy.cut()
    status, headers, _ = await get(client, PATH, headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert lookups(later, await scrape(client)) == {"memory miss": 5, "redis error": 5}
