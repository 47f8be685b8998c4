"""Opening a Redis connection, and waiting for one, are no Redis outage.

A command's deadline (``cache.redis_timeout_seconds``) bounds the command. Opening
a connection has budgets of its own (each step within the timeout: the handshake's
replies, each Sentinel asked for the master), so a Redis some way off and a silent
Sentinel do not turn Redis off. A command that found no free connection within
its deadline is refused (a burst), not taken for Redis down, and never left
unawaited. Latency comes from the fault proxy; no assertion depends on the
machine's speed beyond the margins stated."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import replace
from typing import Any

import pytest
from faultproxy import FaultProxy, Faults
from redisservers import Topology
from yarl import URL

from avatarproxy.redis.commands import NoFreeConnection
from avatarproxy.redis.connection import MAX_CONNECTIONS, RedisConnection, connect
from avatarproxy.redis.link import RedisLink
from avatarproxy.redis.settings import RedisSettings

LATENCY = 0.05  # each way: a round trip of 0.1 s


async def far_redis(redis_url: str, seconds: float) -> tuple[FaultProxy, RedisConnection]:
    proxy = await FaultProxy.start(URL(redis_url).port or 0, Faults(latency=LATENCY))
    settings = RedisSettings(redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                             redis_timeout_seconds=seconds)
    return proxy, connect(settings)


async def test_a_redis_a_third_of_the_timeout_away_opens_connections(redis_url: str) -> None:
    # Opening takes several round trips (0.1 s each), more than the command's 0.3 s;
    # each one fits, and so does the command. Before: never a connection, Redis down.
    proxy, connection = await far_redis(redis_url, seconds=0.3)
    link = RedisLink(connection, retry_after=30)
    assert await link.call("SET", link.client.set("far", b"v")) is True
    assert link.healthy
    assert await link.call("GET", link.client.get("far")) == b"v"
    await link.close()
    await proxy.close()


async def all_connections_opening(redis_url: str) -> tuple[FaultProxy, RedisConnection,
                                                             list[asyncio.Task[Any]]]:
    """Every slot of a connection held by a SET whose connection is still opening
    (several round trips of 0.1 s, with a generous 1 s command timeout)."""
    proxy, connection = await far_redis(redis_url, seconds=1.0)
    holder = RedisLink(connection, retry_after=30)
    holding = [asyncio.create_task(holder.call("SET", holder.client.set(f"h{i}", b"v")))
               for i in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0)  # each has its slot and is opening its connection
    return proxy, connection, holding


async def test_no_free_connection_within_the_deadline_is_refused_not_an_outage(
        redis_url: str) -> None:
    proxy, connection, holding = await all_connections_opening(redis_url)
    # Same slots, a deadline of 0.05 s: over by 0.1 s and a turn of the loop, long
    # before a slot is free (0.4 s at least).
    waiter = RedisLink(replace(connection, timeout=0.05), retry_after=30)
    assert await waiter.call("GET", waiter.client.get("k")) is None
    assert waiter.refused
    assert waiter.healthy and waiter.available
    assert await asyncio.gather(*holding) == [True] * MAX_CONNECTIONS
    await connection.aclose()
    await proxy.close()


async def test_a_command_that_never_got_a_connection_is_closed(redis_url: str) -> None:
    proxy, connection, holding = await all_connections_opening(redis_url)
    hurried = replace(connection, timeout=0.05)
    timed_out = connection.client.get("k")
    with pytest.raises(NoFreeConnection):
        await hurried.run(timed_out)
    cancelled = connection.client.get("k")
    task = asyncio.create_task(connection.run(cancelled))
    await asyncio.sleep(0)  # waiting for a slot
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Closed, not left to be collected with "coroutine ... was never awaited".
    assert inspect.getcoroutinestate(timed_out) == inspect.CORO_CLOSED  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(cancelled) == inspect.CORO_CLOSED  # type: ignore[arg-type]
    await asyncio.gather(*holding)
    await connection.aclose()
    await proxy.close()


async def test_a_silent_first_sentinel_does_not_keep_redis_off(
        redis_sentinel: Topology) -> None:
    # The first Sentinel accepts and never answers (a host gone half-open behind a
    # load balancer). Asking it costs its own timeout, then the next one answers;
    # before, the command's deadline ran out first, every time.
    silent = await FaultProxy.start(1, Faults(stall=True))
    settings = {key.removeprefix("cache."): value
                for key, value in redis_sentinel.overrides.items()}
    settings["redis_sentinels"] = [f"127.0.0.1:{silent.port}", *settings["redis_sentinels"]]
    link = RedisLink(connect(RedisSettings(**settings, redis_timeout_seconds=0.3)),
                     retry_after=30)
    assert await link.call("SET", link.client.set("k", b"v")) is True
    assert link.healthy
    await link.close()
    await silent.close()


async def test_silent_sentinels_are_each_asked_once_per_connection() -> None:
    # Every Sentinel accepts and never answers: the connection gives up after one
    # timeout per Sentinel (docs/redis.md). Before, the connection's retry asked
    # them all again (MasterNotFoundError is a ConnectionError): twice as long.
    silent = [await FaultProxy.start(1, Faults(stall=True)) for _ in range(2)]
    link = RedisLink(connect(RedisSettings(
        redis_mode="sentinel", redis_sentinel_master="mymaster", redis_timeout_seconds=0.1,
        redis_sentinels=[f"127.0.0.1:{proxy.port}" for proxy in silent])), retry_after=30)
    assert await link.call("GET", link.client.get("k")) is None
    assert not link.healthy
    assert [proxy.accepted for proxy in silent] == [1, 1]
    await link.close()
    for proxy in silent:
        await proxy.close()


async def test_no_client_setinfo_to_redis_or_the_sentinels(
        redis_url: str, redis_sentinel: Topology) -> None:
    # Two replies more to read per new connection, for a name in CLIENT LIST.
    # Before, the connections to the Sentinels still sent them.
    redis = await FaultProxy.start(URL(redis_url).port or 0)
    plain = connect(RedisSettings(redis_url=f"redis://127.0.0.1:{redis.port}/0"))
    assert await plain.run(plain.client.set("setinfo", b"v")) is True
    settings = {key.removeprefix("cache."): value
                for key, value in redis_sentinel.overrides.items()}
    first, *others = settings["redis_sentinels"]
    sentinel = await FaultProxy.start(int(first.rpartition(":")[2]))
    settings["redis_sentinels"] = [f"127.0.0.1:{sentinel.port}", *others]
    watched = connect(RedisSettings(**settings))
    assert await watched.run(watched.client.set("setinfo", b"v")) is True
    for connection, proxy in ((plain, redis), (watched, sentinel)):
        await connection.aclose()
        await proxy.close()
        assert proxy.requests and not any(b"SETINFO" in sent for sent in proxy.requests)
