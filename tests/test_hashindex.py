"""The Gravatar hash index and its users delta sync, against the fake Graph's
``/users/delta``: paging, an address added, an address removed, a user deleted,
an expired delta link, a changed index key. Every behaviour is checked on both
stores (this process's memory, the shared Redis); Redis alone: one syncer at a
time, a Redis that does not answer, a Cluster."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import redis as sync_redis
from loopback import free_port
from prometheus_client import REGISTRY

from avatarproxy import indexsync
from avatarproxy.config import load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.graph import usersdelta
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.graph.client import GraphClient
from avatarproxy.hashindex import (
    Entry,
    HashIndex,
    IndexKeys,
    IndexStore,
    IndexUnavailable,
    MemoryIndex,
    SyncState,
)
from avatarproxy.indexsync import IndexSync
from avatarproxy.redis import connection
from avatarproxy.redis.addressindex import RedisIndex
from avatarproxy.redis.link import RedisLink

KEY = "index-key-for-the-tests-0123456789"
PRADEEP = "6d5c4b3a-2918-4776-8554-433221100fed"


def md5(address: str) -> bytes:
    return hashlib.md5(address.encode(), usedforsecurity=False).digest()


def sha256(address: str) -> bytes:
    return hashlib.sha256(address.encode()).digest()


def pradeep() -> FakePerson:
    return FakePerson("pradeep.gupta@contoso.onmicrosoft.com", PRADEEP, "Pradeep Gupta",
                      mail="P.Gupta@contoso.com",
                      proxy_addresses=("SMTP:p.gupta@contoso.com", "smtp:pradeep@contoso.com",
                                       "x500:/o=ExchangeLabs/ou=Exchange/cn=Recipients/cn=pg",
                                       "SIP:p.gupta@contoso.com"))


@asynccontextmanager
async def redis_link(url: str, **overrides: Any) -> AsyncIterator[RedisLink]:
    settings = load_settings(env={}, overrides={"cache.redis_url": url, **overrides})
    link = RedisLink(connection.connect(settings.redis), settings.redis.redis_retry_seconds)
    try:
        yield link
    finally:
        await link.close()


def redis_index(link: RedisLink, key: str = KEY) -> RedisIndex:
    """The index of ``key`` in the shared Redis (each key has its own)."""
    return RedisIndex(link, "avatarproxy:", IndexKeys(key).fingerprint)


@asynccontextmanager
async def graph_client(base_url: str) -> AsyncIterator[GraphClient]:
    settings = load_settings(env={}, overrides={"graph.base_url": base_url})
    async with aiohttp.ClientSession() as session:
        yield GraphClient(settings.graph, StaticTokenProvider("t"), session)


Syncer = tuple[IndexSync, HashIndex]


@pytest.fixture(params=["memory", "redis"])
async def syncer(request: pytest.FixtureRequest, fake_graph: Any
                 ) -> AsyncIterator[Callable[..., Syncer]]:
    """``make(key=KEY)``: an ``IndexSync`` (syncing whenever asked) and its index, over
    this test's store, on the fake Graph with Pradeep added."""
    fake_graph.graph.add(pradeep())
    async with graph_client(fake_graph.base_url) as graph:
        if request.param == "memory":
            memory = MemoryIndex()

            def store(key: str) -> IndexStore:
                return memory

            yield _maker(graph, store)
        else:
            url = request.getfixturevalue("redis_url")
            async with redis_link(url) as link:
                yield _maker(graph, lambda key: redis_index(link, key))


def _maker(graph: GraphClient, store: Callable[[str], IndexStore]) -> Callable[..., Syncer]:
    def make(key: str = KEY) -> Syncer:
        index = HashIndex(store(key), IndexKeys(key))
        return IndexSync(graph, index, interval=0.0), index  # every round is due

    return make


async def owner(index: HashIndex, address: str) -> tuple[str | None, str | None]:
    """Whose the address is, by its MD5 and by its SHA-256."""
    return await index.lookup(md5(address)), await index.lookup(sha256(address))


async def test_a_full_sync_pages_through_every_user_and_indexes_each_address_both_ways(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    fake_graph.graph.delta.page_size = 3
    people = fake_graph.graph.people
    sync, index = syncer()
    assert not index.ready
    assert await sync.sync_once()
    assert index.ready
    pages = fake_graph.graph.requests
    assert [r.raw_path for r in pages[:1]] == [
        "/v1.0/users/delta?$select=id,mail,userPrincipalName,proxyAddresses"]
    assert len(pages) == -(-len(people) // 3)  # every page once, in order
    assert all("$skiptoken=" in r.raw_path for r in pages[1:])
    for address in ("pradeep.gupta@contoso.onmicrosoft.com", "p.gupta@contoso.com",
                    "pradeep@contoso.com"):
        assert await owner(index, address) == (PRADEEP, PRADEEP), address
    # Gravatar hashes the trimmed, lower-cased address; x500: and SIP: are no addresses.
    assert await index.lookup(md5("P.Gupta@contoso.com")) is None
    assert await owner(index, "/o=exchangelabs/ou=exchange/cn=recipients/cn=pg") == (None, None)
    for person in people:
        assert await index.lookup(md5(person.upn.lower())) == person.object_id
    state = await index.store.state()
    assert state is not None and "$deltatoken=" in state.link


async def test_a_delta_round_adds_and_removes_addresses_and_deleted_users(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    tenant = fake_graph.graph
    sync, index = syncer()
    assert await sync.sync_once()
    lee = tenant.person("lee.gu@contoso.com")
    tenant.change(PRADEEP, proxy_addresses=("SMTP:p.gupta@contoso.com", "smtp:pg@contoso.com"))
    tenant.change(lee.object_id, mail="lee@contoso.com")
    tenant.remove("alex.wilber@contoso.com")
    tenant.reset_requests()
    assert await sync.sync_once()
    assert len(tenant.requests) == 1 and "$deltatoken=" in tenant.requests[0].raw_path
    assert await owner(index, "pg@contoso.com") == (PRADEEP, PRADEEP)  # added
    assert await owner(index, "pradeep@contoso.com") == (None, None)  # removed
    assert await owner(index, "p.gupta@contoso.com") == (PRADEEP, PRADEEP)  # kept
    assert await owner(index, "lee@contoso.com") == (lee.object_id, lee.object_id)
    assert await owner(index, "alex.wilber@contoso.com") == (None, None)  # deleted
    adele = tenant.person("adele.vance@contoso.com")
    assert await index.lookup(md5("adele.vance@contoso.com")) == adele.object_id  # untouched
    tenant.reset_requests()
    assert await sync.sync_once()  # nothing changed: one page, nothing written
    assert len(tenant.requests) == 1


async def test_an_address_that_moves_to_another_user_stays_with_them(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    tenant = fake_graph.graph
    sync, index = syncer()
    assert await sync.sync_once()
    # Both changes in one round, the new holder first (ids are listed in order):
    # the old holder's removal must not take the address from them.
    new_holder = tenant.person("0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d")  # $admin, sorts first
    tenant.change(PRADEEP, proxy_addresses=("SMTP:p.gupta@contoso.com",))
    tenant.change(new_holder.object_id, proxy_addresses=("smtp:pradeep@contoso.com",))
    assert await sync.sync_once()
    assert await owner(index, "pradeep@contoso.com") == (new_holder.object_id,) * 2


async def test_an_expired_delta_link_runs_a_full_sync_that_drops_users_deleted_meanwhile(
        syncer: Callable[..., Syncer], fake_graph: Any, caplog: pytest.LogCaptureFixture
        ) -> None:
    tenant = fake_graph.graph
    sync, index = syncer()
    assert await sync.sync_once()
    tenant.remove(PRADEEP)
    tenant.delta.expire_tokens()  # more than seven days without a round
    tenant.reset_requests()
    with caplog.at_level(logging.WARNING, "avatarproxy.indexsync"):
        assert await sync.sync_once()
    paths = [r.raw_path for r in tenant.requests]
    assert "$deltatoken=" in paths[0]  # refused: 400 syncStateNotFound
    assert paths[1] == "/v1.0/users/delta?$select=id,mail,userPrincipalName,proxyAddresses"
    assert "running a full sync" in caplog.text and "syncStateNotFound" in caplog.text
    assert await owner(index, "p.gupta@contoso.com") == (None, None)
    adele = tenant.person("adele.vance@contoso.com")
    assert await index.lookup(sha256("adele.vance@contoso.com")) == adele.object_id
    assert PRADEEP not in await index.store.owners()
    tenant.reset_requests()
    assert await sync.sync_once()  # the new link works
    assert len(tenant.requests) == 1 and "$deltatoken=" in tenant.requests[0].raw_path


async def test_an_index_made_with_another_key_is_never_read_with_this_one(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    old_sync, old = syncer("an-older-index-key-0123456789")
    assert await old_sync.sync_once()
    sync, index = syncer()
    assert await sync.sync_once()
    assert await owner(index, "pradeep@contoso.com") == (PRADEEP, PRADEEP)
    # In memory the process rebuilds it; in Redis each key has an index of its own,
    # the old one kept while replicas still use it (a rotation, below).
    still = isinstance(old.store, RedisIndex)
    assert await owner(old, "pradeep@contoso.com") == ((PRADEEP, PRADEEP) if still
                                                      else (None, None))
    state = await index.store.state()
    assert state is not None and state.key_id == index.keys.fingerprint


async def test_a_throttled_page_waits_for_retry_after_and_keeps_the_rounds_place(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    tenant = fake_graph.graph
    tenant.delta.page_size = 4
    # More 429s than the client retries on its own: the round waits and asks again.
    tenant.inject(429, times=4, headers={"Retry-After": "0.2"}, path_contains="$skiptoken=")
    sync, index = syncer()
    assert await sync.sync_once()
    assert tenant.count("$select=id,mail") == 1  # the round did not start over
    assert index.ready and await index.lookup(md5("pradeep@contoso.com")) == PRADEEP


async def test_a_missing_permission_fails_the_round_and_names_it(
        syncer: Callable[..., Syncer], fake_graph: Any, caplog: pytest.LogCaptureFixture
        ) -> None:
    fake_graph.graph.denied = {"User.Read.All"}
    sync, index = syncer()
    with caplog.at_level(logging.WARNING, "avatarproxy.indexsync"):
        assert not await sync.sync_once()
    assert "grant the application permission User.Read.All" in caplog.text
    assert not index.ready
    fake_graph.graph.denied = set()
    assert await sync.sync_once() and index.ready


async def test_one_replica_syncs_at_a_time_and_the_others_see_its_round(
        fake_graph: Any, redis_url: str) -> None:
    async with redis_link(redis_url) as link_a, redis_link(redis_url) as link_b, \
            graph_client(fake_graph.base_url) as graph:
        a, b = redis_index(link_a), redis_index(link_b)
        assert await a.claim(60) and not await b.claim(60)
        assert await a.renew(60) and not await b.renew(60)
        await a.release()
        assert await b.claim(60)
        await b.release()
        first = HashIndex(a, IndexKeys(KEY))
        assert await IndexSync(graph, first, interval=300).sync_once()
        fake_graph.graph.reset_requests()
        second = HashIndex(b, IndexKeys(KEY))
        assert await IndexSync(graph, second, interval=300).sync_once()
        assert fake_graph.graph.requests == []  # a round ended within the interval
        assert second.ready
        adele = fake_graph.graph.person("adele.vance@contoso.com")
        assert await second.lookup(md5("adele.vance@contoso.com")) == adele.object_id


async def test_a_redis_that_does_not_answer_is_unavailable_not_nobody() -> None:
    async with redis_link(f"redis://127.0.0.1:{free_port()}/0",
                          **{"cache.redis_timeout_seconds": 0.2}) as link:
        index = HashIndex(redis_index(link), IndexKeys(KEY))
        with pytest.raises(IndexUnavailable):
            await index.lookup(md5("adele.vance@contoso.com"))
        with pytest.raises(IndexUnavailable):  # and while it is skipped after the failure
            await index.lookup(md5("adele.vance@contoso.com"))


async def test_redis_holds_hmacs_not_the_hashes_tools_send(
        fake_graph: Any, redis_url: str) -> None:
    async with redis_link(redis_url) as link, graph_client(fake_graph.base_url) as graph:
        index = HashIndex(redis_index(link), IndexKeys(KEY))
        assert await IndexSync(graph, index, interval=0.0).sync_once()
        client = link.client
        dump = b""
        async for name in client.scan_iter("avatarproxy:dir1:*"):
            kind = await client.type(name)
            dump += name + (b"".join(b"".join(pair) for pair in
                                     (await client.hgetall(name)).items())
                            if kind == b"hash" else b"")
    assert dump
    for address in ("adele.vance@contoso.com", "alex.wilber@contoso.com"):
        for digest in (md5(address), sha256(address)):
            assert digest not in dump and digest.hex().encode() not in dump
        assert address.encode() not in dump


async def test_a_delta_round_over_thousands_of_users_is_one_request(
        fake_graph: Any, redis_url: str) -> None:
    tenant = fake_graph.graph
    for n in range(3000):
        tenant.add(FakePerson(f"user{n}@contoso.com", f"00000000-0000-4000-8000-{n:012d}",
                              f"User {n}", mail=f"u{n}@contoso.com",
                              proxy_addresses=(f"SMTP:u{n}@contoso.com",
                                               f"smtp:user.{n}@contoso.com")))
    tenant.delta.page_size = 999
    async with redis_link(redis_url) as link, graph_client(fake_graph.base_url) as graph:
        index = HashIndex(redis_index(link), IndexKeys(KEY))
        sync = IndexSync(graph, index, interval=0.0)
        assert await sync.sync_once()
        assert tenant.count("/users/delta") == 4  # 3000 and the demo people, 999 a page
        assert await index.lookup(sha256("user.2999@contoso.com")) == \
            "00000000-0000-4000-8000-000000002999"
        tenant.reset_requests()
        assert await sync.sync_once()
        assert tenant.count() == 1


async def test_the_index_works_in_a_redis_cluster(redis_cluster: Any, fake_graph: Any) -> None:
    redis_cluster.flush()
    fake_graph.graph.add(pradeep())
    async with redis_link("", **redis_cluster.overrides) as link, \
            graph_client(fake_graph.base_url) as graph:
        index = HashIndex(redis_index(link), IndexKeys(KEY))
        sync = IndexSync(graph, index, interval=0.0)
        assert await sync.sync_once()
        assert await owner(index, "pradeep@contoso.com") == (PRADEEP, PRADEEP)
        fake_graph.graph.change(PRADEEP, proxy_addresses=())
        fake_graph.graph.delta.expire_tokens()  # a full sync and its sweep, across slots
        fake_graph.graph.remove("adele.vance@contoso.com")
        assert await sync.sync_once()
        assert await owner(index, "pradeep@contoso.com") == (None, None)
        assert await owner(index, "adele.vance@contoso.com") == (None, None)
        assert await owner(index, "p.gupta@contoso.com") == (PRADEEP, PRADEEP)


async def test_the_index_needs_only_the_commands_docs_redis_md_grants(
        redis_tls: Any, fake_graph: Any) -> None:
    # The least-privilege ACL user, over TLS: a round, a lookup, the lease, a rebuild.
    async with redis_link("", **redis_tls.overrides) as link, \
            graph_client(fake_graph.base_url) as graph:
        store = redis_index(link)
        await store.clear()
        index = HashIndex(store, IndexKeys(KEY))
        assert await IndexSync(graph, index, interval=0.0).sync_once()
        adele = fake_graph.graph.person("adele.vance@contoso.com")
        assert await index.lookup(md5("adele.vance@contoso.com")) == adele.object_id
        fake_graph.graph.remove(adele.object_id)
        fake_graph.graph.delta.expire_tokens()
        assert await IndexSync(graph, index, interval=0.0).sync_once()
        assert await index.lookup(md5("adele.vance@contoso.com")) is None
        assert link.healthy


def test_sync_state_is_fresh_for_one_interval_after_a_round() -> None:
    import time
    assert SyncState("link", "k", time.time()).fresh(60)
    assert not SyncState("link", "k", time.time() - 61).fresh(60)
    assert not SyncState("", "k", time.time()).fresh(60)  # no complete round yet


# -- review of issue 16 -----------------------------------------------------------------

async def test_replicas_with_two_index_keys_keep_both_indexes_through_a_rotation(
        fake_graph: Any, redis_url: str) -> None:
    # A rolling deploy that changes directory.index_key: replicas of both versions sync
    # the shared Redis in turn. Each key has an index of its own: no full rebuilds.
    new_key = "a-brand-new-index-key-9876543210"
    adele = fake_graph.graph.person("adele.vance@contoso.com")
    async with redis_link(redis_url) as la, redis_link(redis_url) as lb, \
            graph_client(fake_graph.base_url) as graph:
        old = HashIndex(redis_index(la), IndexKeys(KEY))
        new = HashIndex(redis_index(lb, new_key), IndexKeys(new_key))
        old_sync, new_sync = IndexSync(graph, old, 0.0), IndexSync(graph, new, 0.0)
        assert await old_sync.sync_once() and await new_sync.sync_once()
        fake_graph.graph.reset_requests()
        for _ in range(3):
            assert await new_sync.sync_once() and await old_sync.sync_once()
            for index in (old, new):
                assert await index.lookup(md5("adele.vance@contoso.com")) == adele.object_id
        assert fake_graph.graph.count("$select=id,mail") == 0  # delta rounds only


async def test_an_abandoned_keys_index_is_dropped_by_the_new_keys_rounds(
        fake_graph: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with redis_link(redis_url) as link, graph_client(fake_graph.base_url) as graph:
        old = HashIndex(redis_index(link), IndexKeys(KEY))
        assert await IndexSync(graph, old, 0.0).sync_once()
        new_key = "a-brand-new-index-key-9876543210"
        new = HashIndex(redis_index(link, new_key), IndexKeys(new_key))
        assert await IndexSync(graph, new, 0.0).sync_once()
        assert await old.lookup(md5("adele.vance@contoso.com")) is not None  # still in use
        # No replica has synced the old key's index for longer than this: nobody uses it.
        monkeypatch.setattr(indexsync, "ABANDONED_INDEX_SECONDS", 0.0)
        assert await IndexSync(graph, new, 0.0).sync_once()
        assert await old.lookup(md5("adele.vance@contoso.com")) is None
        assert await old.store.state() is None
        names = [n async for n in link.client.scan_iter("avatarproxy:dir1:*")]
        assert names and all(IndexKeys(KEY).fingerprint.encode() not in n for n in names)
        assert await new.lookup(md5("adele.vance@contoso.com")) is not None


@pytest.fixture
def acl_user(redis_url: str) -> Iterator[Callable[..., str]]:
    """``make(name, *more)``: the URL of a Redis user with docs/redis.md's ACL from before
    the index (no HGET, HDEL, HKEYS) and ``more``; deleted after the test."""
    admin = sync_redis.Redis.from_url(redis_url)
    made: list[str] = []

    def make(name: str, *more: str) -> str:
        admin.execute_command(
            "ACL", "SETUSER", name, "on", ">pw", "resetchannels", "~avatarproxy:*",
            "&avatarproxy:purge", "-@all", "+get", "+set", "+exists", "+expire", "+sadd",
            "+ping", "+eval", "+evalsha", "+script|load", "+hmget", "+hset", "+time",
            "+subscribe", "+unsubscribe", "+publish", "+smembers", "+del", *more)
        made.append(name)
        return redis_url.replace("redis://", f"redis://{name}:pw@")

    try:
        yield make
    finally:
        if made:
            admin.execute_command("ACL", "DELUSER", *made)
        admin.close()


async def test_redis_refusing_the_index_commands_is_unavailable_and_the_sync_lives_on(
        fake_graph: Any, acl_user: Callable[..., str], caplog: pytest.LogCaptureFixture
        ) -> None:
    async with redis_link(acl_user("noset", "-set")) as link:
        with pytest.raises(IndexUnavailable):  # a refused SET NX: not "another replica"
            await redis_index(link).claim(60)
    async with redis_link(acl_user("oldacl")) as link, \
            graph_client(fake_graph.base_url) as graph:
        index = HashIndex(redis_index(link), IndexKeys(KEY))
        with pytest.raises(IndexUnavailable):  # NOPERM is not "nobody has it"
            await index.lookup(md5("adele.vance@contoso.com"))
        sync = IndexSync(graph, index, 0.0)
        with caplog.at_level(logging.WARNING, "avatarproxy.indexsync"):
            assert not await sync.sync_once()
            await sync.start(wait=2.0)
            await asyncio.sleep(0.2)
            assert sync._task is not None and not sync._task.done()
            await sync.close()
        assert "directory: index sync failed (redis refused" in caplog.text


async def test_a_bug_in_a_round_is_logged_and_the_schedule_goes_on(
        fake_graph: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexsync, "RETRY_SECONDS", 0.05)
    async with graph_client(fake_graph.base_url) as graph:
        store = MemoryIndex()
        calls = []

        async def broken() -> SyncState | None:
            calls.append(1)
            raise TypeError("a bug")

        monkeypatch.setattr(store, "state", broken)
        sync = IndexSync(graph, HashIndex(store, IndexKeys(KEY)), 3600.0)
        with caplog.at_level(logging.ERROR, "avatarproxy.indexsync"):
            await sync.start(wait=1.0)
            await asyncio.sleep(0.3)
            assert sync._task is not None and not sync._task.done()
            await sync.close()
    assert len(calls) > 1  # tried again, soon
    assert caplog.text.count("directory: index sync failed unexpectedly") == 1
    assert "TypeError: a bug" in caplog.text


def _last_sync() -> float | None:
    return REGISTRY.get_sample_value("avatarproxy_hash_index_last_sync_timestamp_seconds")


async def test_the_last_round_is_exported_as_a_timestamp(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    quick, index = syncer()
    sync = IndexSync(quick._graph, index, 3600.0)
    fake_graph.graph.denied = {"User.Read.All"}  # no round can complete
    await sync.start(wait=2.0)
    try:
        assert _last_sync() == 0.0  # never: what the stale-index alert sees
        fake_graph.graph.denied = set()
        assert await sync.sync_once()
        state = await index.store.state()
        assert state is not None and _last_sync() == state.finished_at
        assert time.time() - state.finished_at < 60
    finally:
        await sync.close()


async def test_a_user_listed_twice_in_one_page_keeps_only_their_last_addresses(
        syncer: Callable[..., Syncer]) -> None:
    _, index = syncer()
    keys = index.keys
    user = "11111111-2222-4333-8444-555555555555"
    page = [Entry(user, keys.of_addresses(["new.name@contoso.com", "old.name@contoso.com"])),
            Entry(user, keys.of_addresses(["new.name@contoso.com"]))]  # their latest state
    await index.store.apply(page)
    assert await owner(index, "old.name@contoso.com") == (None, None)
    assert await owner(index, "new.name@contoso.com") == (user, user)
    await index.store.apply([Entry(user, frozenset())])  # deleted later: nothing left behind
    assert await owner(index, "new.name@contoso.com") == (None, None)
    assert await owner(index, "old.name@contoso.com") == (None, None)


async def test_a_full_round_repairs_the_index_once_a_week(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    sync, index = syncer()
    assert await sync.sync_once()
    fake_graph.graph.reset_requests()
    assert await sync.sync_once()
    assert fake_graph.graph.count("$select=id,mail") == 0  # a delta round
    state = await index.store.state()
    assert state is not None
    await index.store.save_state(SyncState(state.link, state.key_id, state.finished_at,
                                           time.time() - indexsync.FULL_ROUND_SECONDS - 1))
    await index.store.apply([Entry(PRADEEP, frozenset())])  # drift: a user lost
    assert await sync.sync_once()
    assert fake_graph.graph.count("$select=id,mail") == 1  # the full listing again
    assert await owner(index, "pradeep@contoso.com") == (PRADEEP, PRADEEP)


async def test_a_410_on_a_delta_link_starts_a_full_round(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    sync, index = syncer()
    assert await sync.sync_once()
    fake_graph.graph.inject(410, times=1, path_contains="$deltatoken=")
    fake_graph.graph.reset_requests()
    assert await sync.sync_once()
    paths = [r.raw_path for r in fake_graph.graph.requests]
    assert "$deltatoken=" in paths[0] and "$deltatoken=" not in paths[1]
    assert not sync._graph.gate.breaker_open and index.ready


@pytest.mark.parametrize("fault", ["link outside Graph", "page over the cap"])
async def test_a_delta_answer_we_will_not_follow_fails_once_and_waits_for_the_schedule(
        fake_graph: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    tenant = fake_graph.graph
    tenant.delta.page_size = 2
    if fault == "link outside Graph":
        answer = tenant.delta.answer
        monkeypatch.setattr(tenant.delta, "answer", lambda root, people, query: answer(
            "https://graph.example.net/v1.0", people, query))
    else:
        monkeypatch.setattr(usersdelta, "MAX_PAGE_BYTES", 200)
    monkeypatch.setattr(indexsync, "RETRY_SECONDS", 0.05)
    async with graph_client(fake_graph.base_url) as graph:
        sync = IndexSync(graph, HashIndex(MemoryIndex(), IndexKeys(KEY)), 3600.0)
        with caplog.at_level(logging.WARNING, "avatarproxy.indexsync"):
            async with asyncio.timeout(5):
                assert not await sync.sync_once()
            await sync.start(wait=1.0)
            await asyncio.sleep(0.3)  # no retry every RETRY_SECONDS: the next is on schedule
            await sync.close()
        assert tenant.count("/users/delta") == 2  # asked once a round, not again and again
        assert graph.gate.short_circuits == 0 and not graph.gate.breaker_open
        assert graph.gate._failures == 0  # avatars' breaker never heard of it
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "users delta" in errors[0].getMessage()


async def test_delta_pages_arrive_whole_through_a_segmented_slow_link(
        fake_graph: Any, graph_proxy: Any) -> None:
    # As Graph really sends them: in TCP segments with latency, every page and its
    # nextLink through the same front door (the links must stay under graph.base_url).
    from faultproxy import Faults

    fake_graph.graph.add(pradeep())
    fake_graph.graph.delta.page_size = 3
    graph_proxy.faults = Faults(segment=256, pause=0.001, latency=0.005)
    async with graph_client(f"http://127.0.0.1:{graph_proxy.port}/v1.0") as graph:
        index = HashIndex(MemoryIndex(), IndexKeys(KEY))
        sync = IndexSync(graph, index, interval=0.0)
        assert await sync.sync_once()
        assert await owner(index, "p.gupta@contoso.com") == (PRADEEP, PRADEEP)
        for person in fake_graph.graph.people:
            assert await index.lookup(md5(person.upn.lower())) == person.object_id
        assert await sync.sync_once()  # the stored delta link, through the proxy too
    assert graph_proxy.accepted >= 1
