from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from loopback import free_port
from redisservers import Topology

from avatarproxy.cache import AvatarCache, CacheTier, MemoryTier, RedisTier
from avatarproxy.config import load_settings
from avatarproxy.memory import INITIALS_MARK
from avatarproxy.models import PhotoMeta, Profile, Subject
from avatarproxy.redis import connection
from avatarproxy.redis.link import RedisLink

SETTINGS = load_settings(env={}).cache


def redis_tier(url: str, timeout: float = 1.0, **overrides: Any) -> RedisTier:
    settings = load_settings(env={}, overrides={
        "cache.redis_url": url, "cache.redis_timeout_seconds": timeout, **overrides}).redis
    return RedisTier(RedisLink(connection.connect(settings)))


@pytest.fixture(params=["memory", "redis", "redis_tls", "redis_sentinel", "redis_cluster"])
async def tier(request: pytest.FixtureRequest) -> AsyncIterator[CacheTier]:
    """Each tier, and Redis as each kind of deployment, emptied first."""
    made: CacheTier
    if request.param == "memory":
        made = MemoryTier(1024 * 1024)
    elif request.param == "redis":
        made = redis_tier(request.getfixturevalue("redis_url"))
    else:
        topology: Topology = request.getfixturevalue(request.param)
        topology.flush()
        overrides = dict(topology.overrides)
        made = redis_tier(overrides.pop("cache.redis_url", ""), **overrides)
    yield made
    await made.close()

# -- the contract every tier keeps --------------------------------------------

# Under the service's key prefix: the TLS server's ACL user may touch nothing else.
P = load_settings(env={}).redis.key_prefix + "test:"

async def test_missing_key_reads_as_none(tier: CacheTier) -> None:
    assert await tier.get(P + "nothing-here") is None

async def test_binary_values_round_trip_exactly(tier: CacheTier) -> None:
    value = bytes(range(256)) * 10
    await tier.set(P + "k", value, 60)
    assert await tier.get(P + "k") == value

async def test_set_overwrites(tier: CacheTier) -> None:
    await tier.set(P + "k", b"one", 60)
    await tier.set(P + "k", b"two", 60)
    assert await tier.get(P + "k") == b"two"

async def test_entries_expire_after_their_ttl(tier: CacheTier) -> None:
    await tier.set(P + "short", b"x", 1)
    await tier.set(P + "long", b"y", 60)
    await asyncio.sleep(1.2)
    assert await tier.get(P + "short") is None
    assert await tier.get(P + "long") == b"y"

# -- memory tier ---------------------------------------------------------------

async def test_memory_tier_stays_within_its_byte_budget_evicting_least_recent() -> None:
    memory = MemoryTier(3 * 1200)
    for name in ("a", "b", "c"):
        await memory.set(name, b"x" * 1000, 60)
    assert await memory.get("a") is not None  # "a" is now the most recent
    await memory.set("d", b"x" * 1000, 60)
    assert memory.size <= memory.max_bytes
    assert await memory.get("b") is None
    assert [await memory.get(k) is not None for k in ("a", "c", "d")] == [True, True, True]

async def test_memory_tier_skips_values_larger_than_itself() -> None:
    memory = MemoryTier(1000)
    await memory.set("big", b"x" * 5000, 60)
    assert await memory.get("big") is None
    assert memory.size == 0

def _initials(name: str) -> str:
    return f"{P}ini:{{{name}}}:96:png"


async def test_initials_never_evict_photos_and_hold_at_most_their_share() -> None:
    memory = MemoryTier(8 * 1200)  # initials: at most 1200 bytes
    photos = [f"{P}img:{{p{n}}}:x:96:webp" for n in range(7)]
    for key in photos:
        await memory.set(key, b"p" * 1000, 60)
    photos_size = memory.size
    for n in range(50):  # any number of sizes, people, formats
        await memory.set(_initials(f"i{n}"), b"i" * 400, 60)
        assert memory.size - photos_size <= memory.initials_max_bytes
    assert [await memory.get(key) is not None for key in photos] == [True] * 7
    assert await memory.get(_initials("i49")) is not None  # the newest initials stay
    assert await memory.get(_initials("i0")) is None


async def test_photos_may_use_the_whole_tier_pushing_out_photos_before_initials() -> None:
    memory = MemoryTier(8 * 1200)
    await memory.set(_initials("kept"), b"i" * 400, 60)
    for n in range(9):  # more than the tier holds
        await memory.set(f"{P}img:{{p{n}}}:x:96:webp", b"p" * 1000, 60)
    assert memory.size <= memory.max_bytes
    assert await memory.get(f"{P}img:{{p0}}:x:96:webp") is None  # the oldest photo went
    assert await memory.get(f"{P}img:{{p8}}:x:96:webp") is not None
    assert await memory.get(_initials("kept")) is not None
    # Only when no other photo is left to go does a photo push initials out.
    await memory.set(f"{P}img:{{huge}}:x:96:webp", b"p" * (8 * 1200 - 200), 60)
    assert await memory.get(f"{P}img:{{huge}}:x:96:webp") is not None
    assert memory.size <= memory.max_bytes


def test_only_initials_keys_carry_the_initials_mark() -> None:
    cache = AvatarCache(SETTINGS, [])
    subject = Subject("adele.vance@contoso.com")
    assert INITIALS_MARK in cache.initials_key(["AV"], (1, 2, 3), 96, "png", "1")
    assert not any(INITIALS_MARK in key for key in (
        cache.photo_key(subject, '"E"', 96, "webp", "1"), cache.source_key(subject, '"E"', 96),
        cache.meta_key(subject), cache.alias_key(subject)))


async def test_metadata_is_written_as_before_unless_it_names_a_upn_and_read_whatever_it_adds(
        ) -> None:
    memory = MemoryTier(10**6)
    cache = AvatarCache(SETTINGS, [memory])
    subject = Subject("adele.vance@contoso.com")
    meta = PhotoMeta(has_photo=False, profile=Profile(display_name="Adele"),
                     fetched_at=time.time())
    await cache.put_meta(subject, meta)
    # Replicas of the previous version read profiles with exactly these fields.
    stored = json.loads(await memory.get(cache.meta_key(subject)) or b"")
    assert set(stored["profile"]) == {"object_id", "display_name", "given_name", "surname"}
    # A later version's fields are left out, not taken for a broken entry.
    stored["profile"]["pronouns"], stored["colour"] = "she/her", "#123456"
    await memory.set(cache.meta_key(subject), json.dumps(stored).encode(), 60)
    assert await cache.get_meta(subject) == meta


# -- redis tier ------------------------------------------------------------------

async def test_unreachable_redis_reads_as_a_miss_quickly() -> None:
    tier = redis_tier(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    started = time.monotonic()
    await tier.set("k", b"v", 60)
    assert await tier.get("k") is None
    assert time.monotonic() - started < 2
    await tier.close()


async def test_a_type_error_of_ours_under_a_redis_command_is_raised_not_taken_for_redis_down(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py calls our password-file reader when it connects; a bug there is a bug,
    not a failing Redis that the service would quietly run without."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    tier = redis_tier(redis_url, **{"cache.redis_password_file": str(password)})

    def broken(self: object) -> tuple[str]:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(connection._PasswordFile, "get_credentials", broken)
    try:
        with pytest.raises(TypeError, match="a bug of ours"):
            await tier.get(P + "k")
        assert tier.healthy
    finally:
        await tier.close()

# -- the two tiers together ----------------------------------------------------------

@pytest.fixture
async def tiered(redis_url: str) -> AsyncIterator[tuple[AvatarCache, MemoryTier]]:
    memory = MemoryTier(1024 * 1024)
    cache = AvatarCache(SETTINGS, [memory, redis_tier(redis_url)])
    yield cache, memory
    await cache.close()

async def test_every_redis_key_gets_a_ttl(tiered: tuple[AvatarCache, MemoryTier],
                                          redis_url: str) -> None:
    cache, _ = tiered
    subject = Subject("adele.vance@contoso.com")
    await cache.put_meta(subject, PhotoMeta(has_photo=False, fetched_at=time.time()))
    await cache.put_image(cache.photo_key(subject, '"E1"', 48, "jpeg", "1"), b"jpeg",
                          owner=subject)
    client = aioredis.Redis.from_url(redis_url)
    keys = await client.keys("*")
    assert len(keys) == 3  # metadata, image, and the person's index for purge
    ttls = {key.decode(): await client.ttl(key) for key in keys}
    await client.aclose()
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    meta_ttl = ttls[cache.meta_key(subject)]
    assert SETTINGS.stale_ttl_seconds - 5 < meta_ttl <= SETTINGS.stale_ttl_seconds

async def test_redis_hits_are_promoted_to_memory(redis_url: str) -> None:
    writer = AvatarCache(SETTINGS, [MemoryTier(10**6), redis_tier(redis_url)])
    await writer.put_image("avatarproxy:v2:img:k", b"bytes")
    await writer.close()
    memory = MemoryTier(10**6)
    reader = AvatarCache(SETTINGS, [memory, redis_tier(redis_url)])
    assert await memory.get("avatarproxy:v2:img:k") is None
    assert await reader.get_image("avatarproxy:v2:img:k") == b"bytes"
    assert await memory.get("avatarproxy:v2:img:k") == b"bytes"
    await reader.close()

async def test_metadata_round_trips_with_its_profile(
        tiered: tuple[AvatarCache, MemoryTier]) -> None:
    cache, memory = tiered
    subject = Subject("megan@contoso.com")
    meta = PhotoMeta(has_photo=False, fetched_at=123.5,
                     profile=Profile("0b1c", "Megan Bowen", "Megan", "Bowen"))
    await cache.put_meta(subject, meta)
    await memory.close()  # force the read through Redis
    assert await cache.get_meta(subject) == meta


def test_freshness_uses_the_positive_and_negative_ttls() -> None:
    cache = AvatarCache(SETTINGS, [])
    now = time.time()
    photo = PhotoMeta(has_photo=True, media_etag='"E"', width=48, height=48, fetched_at=now)
    assert cache.is_fresh(photo)
    assert cache.is_fresh(replace(photo, fetched_at=now - SETTINGS.metadata_ttl_seconds + 5))
    assert not cache.is_fresh(replace(photo, fetched_at=now - SETTINGS.metadata_ttl_seconds - 1))
    nophoto = PhotoMeta(has_photo=False, fetched_at=now - SETTINGS.negative_ttl_seconds - 1)
    assert not cache.is_fresh(nophoto)
    assert cache.is_fresh(replace(nophoto, fetched_at=now - SETTINGS.negative_ttl_seconds + 5))

def test_photo_keys_change_with_the_media_etag_and_renderer_and_ignore_case_of_upn() -> None:
    cache = AvatarCache(SETTINGS, [])
    a = cache.photo_key(Subject("a@contoso.com"), '"E1"', 48, "jpeg", "1")
    assert a != cache.photo_key(Subject("a@contoso.com"), '"E2"', 48, "jpeg", "1")
    assert a != cache.photo_key(Subject("a@contoso.com"), '"E1"', 64, "jpeg", "1")
    assert a != cache.photo_key(Subject("a@contoso.com"), '"E1"', 48, "webp", "1")
    assert a != cache.photo_key(Subject("a@contoso.com"), '"E1"', 48, "jpeg", "2")
    assert a == cache.photo_key(Subject("A@Contoso.com".lower()), '"E1"', 48, "jpeg", "1")
    assert a.startswith("avatarproxy:v2:")


async def test_a_command_the_acl_refuses_fails_alone_and_leaves_redis_to_the_others(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # The documented ACL less +hset, which only the rate-limit script needs: Redis still
    # answers every cache command, so the cache tier and the download locks keep using it
    # (one health for every Redis user must not read a refusal as "Redis is down").
    import logging

    import redis as syncredis

    from avatarproxy.cache import SCHEMA_VERSION
    from avatarproxy.ratelimit import RateLimiter
    from avatarproxy.redis.coordination import Coordination

    user = "nohset-" + str(free_port())
    with syncredis.Redis.from_url(redis_url) as admin:
        admin.execute_command(
            "ACL", "SETUSER", user, "on", ">pw", "~avatarproxy:*", "-@all", "+get", "+set",
            "+exists", "+expire", "+sadd", "+ping", "+eval", "+evalsha", "+script|load",
            "+hmget", "+time")
    settings = load_settings(env={}, overrides={
        "cache.redis_url": redis_url.replace("redis://", f"redis://{user}:pw@")})
    shared = Coordination.connect(settings.redis, SCHEMA_VERSION)
    assert shared.link is not None and shared.locks is not None
    tier = RedisTier(shared.link)
    limiter = RateLimiter(50, 500, shared.buckets)
    key = f"avatarproxy:{SCHEMA_VERSION}:img:{{acl}}:e:48:jpeg"
    caplog.set_level(logging.INFO)
    try:
        await tier.set(key, b"photo", 60)
        assert await limiter.allow("192.0.2.1")  # refused in Redis: limited in-process
        assert shared.link.healthy
        assert await tier.get(key) == b"photo"
        assert await shared.locks.try_lock(key, "token", 5) == (True, True)
        lines = [r.getMessage() for r in caplog.records if r.name == "avatarproxy.redis.link"]
        assert any("EVALSHA failed" in line for line in lines), lines
        assert not any(line.startswith("redis is back") for line in lines), lines
    finally:
        await limiter.close()
        await tier.close()
        with syncredis.Redis.from_url(redis_url) as admin:
            admin.execute_command("ACL", "DELUSER", user)
