"""A Redis-tier hit in one round trip (``readahead``): the photo of the mediaEtag a
replica last saw is read with the metadata, and served only if the metadata still
names it. Real Redis (standalone, Sentinel, Cluster), the fault proxy's record of
what the service sent, no memory tier: every answer comes from Redis."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from appclient import MakeClient, get
from faultproxy import FaultProxy
from redisservers import Topology

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


def test_last_seen_keeps_a_bounded_number_of_people_forgetting_the_oldest() -> None:
    seen = LastSeen(kept=2)
    people = [Subject(f"p{n}@contoso.com") for n in range(3)]
    for n, person in enumerate(people):
        seen.saw(person, PhotoMeta(has_photo=True, media_etag=f'"E{n}"'))
    assert [seen.media_etag(p) for p in people] == [None, '"E1"', '"E2"']
    seen.saw(people[1], PhotoMeta(has_photo=False))  # no photo: nothing to read ahead
    assert seen.media_etag(people[1]) is None
