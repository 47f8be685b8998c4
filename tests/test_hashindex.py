"""The Gravatar hash index and its users delta sync, against the fake Graph's
``/users/delta``: paging, an address added, an address removed, a user deleted,
an expired delta link, a changed index key. Every behaviour is checked on both
stores (this process's memory, the shared Redis); Redis alone: one syncer at a
time, a Redis that does not answer, a Cluster."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from loopback import free_port

from avatarproxy.config import load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.graph.client import GraphClient
from avatarproxy.hashindex import (
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

            def store() -> IndexStore:
                return memory

            yield _maker(graph, store)
        else:
            url = request.getfixturevalue("redis_url")
            async with redis_link(url) as link:
                yield _maker(graph, lambda: RedisIndex(link, "avatarproxy:"))


def _maker(graph: GraphClient, store: Callable[[], IndexStore]) -> Callable[..., Syncer]:
    def make(key: str = KEY) -> Syncer:
        index = HashIndex(store(), IndexKeys(key))
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


async def test_an_index_made_with_another_key_is_rebuilt_and_the_old_keys_stop_working(
        syncer: Callable[..., Syncer], fake_graph: Any) -> None:
    old_sync, old = syncer("an-older-index-key-0123456789")
    assert await old_sync.sync_once()
    sync, index = syncer()
    assert await sync.sync_once()
    assert await owner(index, "pradeep@contoso.com") == (PRADEEP, PRADEEP)
    assert await owner(old, "pradeep@contoso.com") == (None, None)
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
        a, b = RedisIndex(link_a, "avatarproxy:"), RedisIndex(link_b, "avatarproxy:")
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
        index = HashIndex(RedisIndex(link, "avatarproxy:"), IndexKeys(KEY))
        with pytest.raises(IndexUnavailable):
            await index.lookup(md5("adele.vance@contoso.com"))
        with pytest.raises(IndexUnavailable):  # and while it is skipped after the failure
            await index.lookup(md5("adele.vance@contoso.com"))


async def test_redis_holds_hmacs_not_the_hashes_tools_send(
        fake_graph: Any, redis_url: str) -> None:
    async with redis_link(redis_url) as link, graph_client(fake_graph.base_url) as graph:
        index = HashIndex(RedisIndex(link, "avatarproxy:"), IndexKeys(KEY))
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
        index = HashIndex(RedisIndex(link, "avatarproxy:"), IndexKeys(KEY))
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
        index = HashIndex(RedisIndex(link, "avatarproxy:"), IndexKeys(KEY))
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
        store = RedisIndex(link, "avatarproxy:")
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
