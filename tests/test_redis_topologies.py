"""Redis as companies run it, end to end: failover under load for Sentinel and
Cluster, key layout for Cluster, TLS trust, full memory, configuration."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from appclient import Client, MakeClient, client_factory
from loopback import free_port, wait_for
from redis.crc import key_slot
from redisservers import Server, Topology, sentinel_master_port, start_cluster

from avatarproxy.app import create_app
from avatarproxy.cache import AvatarCache, RedisTier
from avatarproxy.cli import main
from avatarproxy.config import load_settings
from avatarproxy.errors import ConfigError
from avatarproxy.models import Subject
from avatarproxy.purge import LISTENER
from avatarproxy.redis import connection
from avatarproxy.redis.link import RedisLink
from avatarproxy.redis.purgechannel import channel as purge_channel

PEOPLE = ["adele.vance@contoso.com", "alex.wilber@contoso.com", "megan.bowen@contoso.com",
          "lee.gu@contoso.com"]
CASES = [(person, size) for person in PEOPLE for size in (48, 96)]
KEYS = AvatarCache(load_settings(env={}).cache, [])


@pytest.fixture
def make_client(aiohttp_client: Any, idp_settings: dict[str, Any]) -> MakeClient:
    """A service on the Redis deployment its overrides name, with no memory tier:
    every request goes to Redis, so a failover is felt by every request."""
    return client_factory(aiohttp_client, {
        **idp_settings, "cache.memory_max_bytes": 0, "cache.redis_timeout_seconds": 0.3,
        # One test client is one address: the misses limiter would answer initials.
        "security.rate_limit_per_second": 0.0})


@dataclass
class Load:
    """Requests running in the background, each answer checked against a reference."""

    client: Client
    reference: dict[tuple[str, int], bytes]
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def worker(self, offset: int) -> None:
        index = offset
        while not self.stop.is_set():
            person, size = CASES[index % len(CASES)]
            index += 1
            async with self.client.get(f"/avatar/{person}/{size}") as resp:
                body = await resp.read()
                if resp.status != 200 or body != self.reference[(person, size)]:
                    self.failures.append(f"{person}/{size}: {resp.status}, {len(body)} bytes")
            self.answers += 1
            async with self.progress:
                self.progress.notify_all()

    async def more_answers(self, count: int) -> None:
        target = self.answers + count
        async with self.progress:
            await self.progress.wait_for(lambda: self.answers >= target)


async def reference_images(client: Client) -> dict[tuple[str, int], bytes]:
    reference = {}
    for person, size in CASES:
        async with client.get(f"/avatar/{person}/{size}") as resp:
            assert resp.status == 200
            reference[(person, size)] = await resp.read()
    return reference


async def under_load(client: Client, failover: Callable[[], None],
                     after: Callable[[], None]) -> Load:
    """Fail over (blocking, in a thread) while requests run, then wait for
    ``after`` and for another round of answers."""
    load = Load(client, await reference_images(client))
    workers = [asyncio.create_task(load.worker(offset)) for offset in range(3)]
    try:
        await load.more_answers(len(CASES))
        await asyncio.to_thread(failover)
        await asyncio.to_thread(after)
        await load.more_answers(len(CASES))
    finally:
        load.stop.set()
        await asyncio.gather(*workers)
    return load


async def served_from_redis(client: Client, fake_graph: Any) -> None:
    """Served from the new master, not from Graph: two more rounds of every
    case after a failover cost at most ``len(CASES)`` Graph calls."""
    graph_calls = len(fake_graph.graph.requests)
    await reference_images(client)
    await reference_images(client)
    assert len(fake_graph.graph.requests) - graph_calls <= len(CASES)


def rewritten_on(server: Server, key: str) -> Callable[[], None]:
    """Delete ``key`` on ``server`` and wait until the service writes it there again."""
    def wait() -> None:
        client = server.client()
        try:
            client.delete(key)
            wait_for(lambda: client.exists(key) == 1, f"{key} rewritten on {server.port}")
        finally:
            client.close()
    return wait


async def test_sentinel_failover_under_load_serves_every_request_and_reconnects(
        redis_sentinel: Topology, make_client: MakeClient, fake_graph: Any) -> None:
    redis_sentinel.flush()
    client = await make_client(**redis_sentinel.overrides)
    old_port = sentinel_master_port(redis_sentinel)
    old_master = next(s for s in redis_sentinel.servers if s.port == old_port)
    promoted: list[Server] = []

    def kill_master() -> None:
        old_master.kill()
        wait_for(lambda: sentinel_master_port(redis_sentinel) != old_port,
                 "the Sentinels to promote the replica")
        promoted.append(next(s for s in redis_sentinel.servers
                             if s.port == sentinel_master_port(redis_sentinel)))

    meta_key = KEYS.meta_key(Subject(PEOPLE[0]))
    load = await under_load(client, kill_master, lambda: rewritten_on(promoted[0], meta_key)())
    assert load.failures == []
    await served_from_redis(client, fake_graph)


async def test_cluster_failover_under_load_serves_every_request_and_follows_the_slot(
        redis_cluster: Topology, make_client: MakeClient, fake_graph: Any) -> None:
    redis_cluster.flush()
    client = await make_client(**redis_cluster.overrides)
    meta_key = KEYS.meta_key(Subject(PEOPLE[0]))
    slot, _owner, replica = _slot_owner_and_replica(redis_cluster, meta_key)

    def failover() -> None:
        with replica.client() as admin:
            admin.execute_command("CLUSTER FAILOVER")
        wait_for(lambda: _owns(replica, slot), "the replica to take over the slot")

    load = await under_load(client, failover, rewritten_on(replica, meta_key))
    assert load.failures == []
    await served_from_redis(client, fake_graph)


async def test_cluster_master_killed_under_load_serves_every_request_and_recovers(
        redis_cluster: Topology, make_client: MakeClient) -> None:
    redis_cluster.flush()
    client = await make_client(**redis_cluster.overrides)
    meta_key = KEYS.meta_key(Subject(PEOPLE[1]))
    slot, owner, replica = _slot_owner_and_replica(redis_cluster, meta_key)

    def kill_master() -> None:
        owner.kill()
        wait_for(lambda: _owns(replica, slot), "the replica to be elected")

    load = await under_load(client, kill_master, rewritten_on(replica, meta_key))
    assert load.failures == []


async def test_purge_reaches_replicas_through_the_cluster_while_its_seed_node_is_stopped(
        aiohttp_client: Any, idp_settings: dict[str, Any], fake_graph: Any,
        tmp_path: Path) -> None:
    # A cluster of its own (two seconds to start): this test stops its seed for good.
    with start_cluster(tmp_path / "cluster") as cluster:
        serve = client_factory(aiohttp_client, {**idp_settings, **cluster.overrides})
        replicas = [await serve(), await serve()]
        for client in replicas:  # now in each replica's memory tier
            async with client.get(f"/avatar/{PEOPLE[0]}/48") as resp:
                assert resp.headers["X-Avatar-Source"] == "photo"
        seed = cluster.servers[0]  # the node cache.redis_url names, a master
        survivor = next(s for s in cluster.servers if _replica_of(s, seed))
        await asyncio.to_thread(wait_for, lambda: _listeners(cluster) == 2, "both subscribed")
        await asyncio.to_thread(seed.stop)
        # The replicas subscribe again through nodes that still answer ...
        await asyncio.to_thread(wait_for, lambda: _listeners(cluster) == 2, "subscribed again")
        # ... and the seed's replica takes its slots over, so purge can delete every key.
        await asyncio.to_thread(wait_for, lambda: _is_master(survivor), "a new master")
        fake_graph.graph.set_photo(PEOPLE[0], None)  # the takedown in the directory
        config = tmp_path / "avatarproxy.toml"
        config.write_text('[cache]\nredis_mode = "cluster"\n'
                          f'redis_url = "redis://127.0.0.1:{survivor.port}"\n')
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert await asyncio.to_thread(main, ["purge", "--config", str(config),
                                                  PEOPLE[0]]) == 0
        assert "2 running replicas told" in out.getvalue()
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.server.app[LISTENER].handled.wait() for c in replicas))
        for client in replicas:
            async with client.get(f"/avatar/{PEOPLE[0]}/48") as resp:
                assert resp.headers["X-Avatar-Source"] == "initials"


def _listeners(cluster: Topology) -> int:
    """Subscribers of the purge channel over the nodes that are running."""
    total = 0
    for server in cluster.servers:
        if server.process.poll() is None:
            with server.client() as client:
                total += dict(client.pubsub_numsub(purge_channel("avatarproxy:")))[
                    purge_channel("avatarproxy:").encode()]
    return total


def _is_master(server: Server) -> bool:
    with server.client() as client:
        return bool(client.info("replication").get("role") == "master")


def _slot_owner_and_replica(cluster: Topology, key: str) -> tuple[int, Server, Server]:
    """The slot of ``key``, the master that serves it and that master's replica."""
    slot = key_slot(key.encode())
    owner = next(s for s in cluster.masters() if _owns(s, slot))
    replica = next(s for s in cluster.servers if _replica_of(s, owner))
    return slot, owner, replica


def _owns(server: Server, slot: int) -> bool:
    with server.client() as client:
        if client.info("replication").get("role") != "master":
            return False
        shards = client.execute_command("CLUSTER", "SLOTS")
    return any(int(start) <= slot <= int(end) and int(nodes[1]) == server.port
               for start, end, nodes, *_ in shards)


def _replica_of(server: Server, master: Server) -> bool:
    with server.client() as client:
        info = client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_port") == master.port)


async def test_a_cluster_no_node_of_which_answers_reads_as_a_miss(
        make_client: MakeClient) -> None:
    # redis-py raises RedisClusterException there, which is no RedisError: it was a 500.
    client = await make_client(**{"cache.redis_mode": "cluster",
                                  "cache.redis_url": f"redis://127.0.0.1:{free_port()}"})
    async with client.get(f"/avatar/{PEOPLE[0]}/48") as resp:
        assert (resp.status, resp.headers["X-Avatar-Source"]) == (200, "photo")


# -- key layout --------------------------------------------------------------------------

def test_every_key_of_one_person_shares_a_cluster_slot() -> None:
    for person in PEOPLE:
        subject = Subject(person)
        slots = {key_slot(key.encode()) for key in (
            KEYS.meta_key(subject), KEYS.photo_key(subject, '"E1"', 48, "jpeg", "1"),
            KEYS.photo_key(subject, '"E2"', 432, "webp", "1"))}
        assert len(slots) == 1, person
    spread = {key_slot(KEYS.meta_key(Subject(p)).encode()) for p in PEOPLE}
    assert len(spread) > 1  # people are spread over the cluster


async def test_two_deployments_with_their_own_prefix_share_one_redis(redis_url: str) -> None:
    settings = [load_settings(env={}, overrides={
        "cache.redis_url": redis_url, "cache.key_prefix": prefix})
        for prefix in ("intranet:", "extranet:")]
    intranet, extranet = (AvatarCache(s.cache, [RedisTier(RedisLink(connection.connect(s.redis)))],
                                      s.redis.key_prefix)
                          for s in settings)
    subject = Subject(PEOPLE[0])
    await intranet.put_image(intranet.photo_key(subject, '"E"', 48, "jpeg", "1"), b"intranet")
    assert await extranet.get_image(extranet.photo_key(subject, '"E"', 48, "jpeg", "1")) is None
    assert await intranet.get_image(
        intranet.photo_key(subject, '"E"', 48, "jpeg", "1")) == b"intranet"
    with redis.Redis.from_url(redis_url) as direct:
        assert [k.decode() for k in direct.keys("*")] == [
            f"intranet:v2:img:{{{PEOPLE[0]}}}:{_digest_of(intranet, subject)}:48:jpeg"]
    await intranet.close()
    await extranet.close()


def _digest_of(cache: AvatarCache, subject: Subject) -> str:
    return cache.photo_key(subject, '"E"', 48, "jpeg", "1").split(":")[-3]


# -- full memory, TLS trust --------------------------------------------------------------

async def test_a_write_refused_for_lack_of_memory_is_counted_and_ignored(
        redis_url: str) -> None:
    settings = load_settings(env={}, overrides={"cache.redis_url": redis_url}).redis
    tier = RedisTier(RedisLink(connection.connect(settings)))
    with redis.Redis.from_url(redis_url) as admin:
        policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # below what is used: every write is refused
        try:
            await tier.set("avatarproxy:v2:img:{x}:big", b"x" * 10_000, 60)
            assert tier.writes_refused_for_memory == 1
            assert await tier.get("avatarproxy:v2:img:{x}:big") is None
        finally:
            admin.config_set("maxmemory", 0)
            admin.config_set("maxmemory-policy", policy)
    await tier.set("avatarproxy:v2:img:{x}:big", b"x" * 10_000, 60)
    assert await tier.get("avatarproxy:v2:img:{x}:big") == b"x" * 10_000
    assert tier.writes_refused_for_memory == 1
    await tier.close()


async def test_a_redis_whose_certificate_is_not_trusted_reads_as_a_miss(
        redis_tls: Topology) -> None:
    overrides = {**redis_tls.overrides, "cache.redis_ca_file": ""}  # system trust only
    settings = load_settings(env={}, overrides=overrides).redis
    tier = RedisTier(RedisLink(connection.connect(settings)))
    await tier.set("k", b"v", 60)
    assert await tier.get("k") is None
    await tier.close()
    with redis_tls.servers[0].client() as direct:
        assert direct.exists("k") == 0


async def test_a_rotated_password_file_is_used_when_redis_drops_the_connection(
        redis_tls: Topology) -> None:
    password_file = Path(redis_tls.overrides["cache.redis_password_file"])
    settings = load_settings(env={}, overrides=redis_tls.overrides).redis
    tier = RedisTier(RedisLink(connection.connect(settings)))
    await tier.set("avatarproxy:rotated", b"before", 60)  # the ACL user's keys
    with redis_tls.servers[0].client() as admin:
        old = _rotate(admin, password_file, "new-secret")
        try:
            admin.client_kill_filter(user="avatarproxy")
            assert await tier.get("avatarproxy:rotated") == b"before"
        finally:
            _rotate(admin, password_file, old)
    await tier.close()


def _rotate(admin: redis.Redis, password_file: Path, new: str) -> str:
    """Rotate the secret as an operator would: add the new password, write the
    file, revoke the old password. Returns the old one."""
    old = password_file.read_text().strip()
    admin.acl_setuser("avatarproxy", enabled=True, passwords=[f"+{new}"])
    password_file.write_text(new + "\n")
    admin.acl_setuser("avatarproxy", enabled=True, passwords=[f"-{old}"])
    return old


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"cache.redis_mode": "cluster", "cache.redis_url": "unix:///run/redis.sock"},
     "cache.redis_url: cluster mode needs"),
    ({"cache.redis_mode": "cluster", "cache.redis_url": "redis://h:6379/3"},
     "cache.redis_url: a Redis Cluster has only database 0"),
    ({"cache.redis_mode": "sentinel"}, "cache.redis_sentinels: sentinel mode needs"),
    ({"cache.redis_mode": "sentinel", "cache.redis_sentinels": ["no-port"]},
     "cache.redis_sentinels: expected host:port, got 'no-port'"),
    ({"cache.redis_url": "http://:hunter2@h"}, "cache.redis_url: must start with redis://"),
    ({"cache.redis_url": "redis://h", "cache.redis_password_file": "/nonexistent/pw"},
     "cache.redis_password_file: no such file"),
])
def test_redis_settings_that_cannot_work_stop_start_up(overrides: dict[str, Any],
                                                       problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(load_settings(env={}, overrides=overrides))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    assert "hunter2" not in " ".join(caught.value.problems)
