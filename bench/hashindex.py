"""Measure the Gravatar hash index at scale: users with three addresses each.

Usage: .venv/bin/python bench/hashindex.py [users]   (default 100,000)
The fake Graph's users delta serves that many users (a UPN, a mail that is also
the primary SMTP address, one alias: three addresses, six index keys), in pages
of 999; a private redis-server on loopback holds the shared index. Prints the
first (full) round's time and pages, a round with no change and one with 1,000
changed users, and the index's footprint in this process (tracemalloc) and in
Redis (``used_memory``). docs/integrations.md ("Scale") quotes these numbers.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import aiohttp
import redis

from avatarproxy.config import load_settings
from avatarproxy.demo.fakegraph import FakeGraph, start_fake_graph
from avatarproxy.demo.people import FakePerson
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.graph.client import GraphClient
from avatarproxy.hashindex import HashIndex, IndexKeys, IndexStore, MemoryIndex
from avatarproxy.indexsync import IndexSync
from avatarproxy.redis import connection
from avatarproxy.redis.addressindex import RedisIndex
from avatarproxy.redis.link import RedisLink

KEY = "bench-index-key-0123456789abcdef"


def tenant(users: int) -> FakeGraph:
    graph = FakeGraph()
    graph.delta.page_size = 999
    for n in range(users):
        graph.add(FakePerson(f"user{n}@contoso.onmicrosoft.com",
                             f"{n:08x}-0000-4000-8000-000000000000", f"User {n}",
                             mail=f"first.last{n}@contoso.com",
                             proxy_addresses=(f"SMTP:first.last{n}@contoso.com",
                                              f"smtp:fl{n}@contoso.com")))
    return graph


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def timed(label: str, step: Callable[[], Awaitable[bool]], graph: FakeGraph) -> None:
    graph.reset_requests()
    began = time.perf_counter()
    assert await step(), label
    print(f"  {label}: {time.perf_counter() - began:.2f} s, {graph.count()} requests")


async def rounds(graph: FakeGraph, base_url: str, store: IndexStore) -> None:
    settings = load_settings(env={}, overrides={"graph.base_url": base_url})
    async with aiohttp.ClientSession() as session:
        client = GraphClient(settings.graph, StaticTokenProvider("t"), session)
        sync = IndexSync(client, HashIndex(store, IndexKeys(KEY)), interval=0.0)
        await timed("full round", sync.sync_once, graph)
        await timed("delta round, nothing changed", sync.sync_once, graph)
        for n in range(0, len(graph.people), max(1, len(graph.people) // 1000)):
            graph.change(f"{n:08x}-0000-4000-8000-000000000000",
                         proxy_addresses=(f"SMTP:first.last{n}@contoso.com",
                                          f"smtp:new{n}@contoso.com"))
        await timed("delta round, 1,000 users changed", sync.sync_once, graph)


async def in_memory(users: int) -> None:
    graph = tenant(users)
    runner, base_url = await start_fake_graph(graph)
    try:
        print(f"{users} users, 3 addresses each, in memory:")
        tracemalloc.start()
        memory = MemoryIndex()
        await rounds(graph, base_url, memory)
        # What the index keeps alive: its dicts, keys and object ids (not the fake's pages).
        held = tracemalloc.take_snapshot().filter_traces([
            tracemalloc.Filter(True, "*/avatarproxy/hashindex.py"),
            tracemalloc.Filter(True, "*/avatarproxy/graph/usersdelta.py"),
            tracemalloc.Filter(True, "*/avatarproxy/indexsync.py")])
        grown = sum(stat.size for stat in held.statistics("filename"))
        tracemalloc.stop()
        print(f"  {len(memory)} index keys hold {grown / 2**20:.1f} MiB "
              f"({grown / len(memory):.0f} bytes a key, {grown / users:.0f} a user)")
    finally:
        await runner.cleanup()


def main(users: int) -> None:
    asyncio.run(in_memory(users))
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", directory],
                                  stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            asyncio.run(in_redis(users, port))
        finally:
            server.terminate()
            server.wait()


async def in_redis(users: int, port: int) -> None:
    graph = tenant(users)  # a fresh tenant: its change log starts over
    runner, base_url = await start_fake_graph(graph)
    direct = redis.Redis(port=port)
    try:
        before = int(direct.info("memory")["used_memory"])
        print(f"{users} users, 3 addresses each, in Redis:")
        settings = load_settings(env={}, overrides={"cache.redis_url":
                                                    f"redis://127.0.0.1:{port}/0"})
        link = RedisLink(connection.connect(settings.redis))
        try:
            await rounds(graph, base_url,
                         RedisIndex(link, "avatarproxy:", IndexKeys(KEY).fingerprint))
        finally:
            await link.close()
        grown = int(direct.info("memory")["used_memory"]) - before
        print(f"  Redis used_memory grew {grown / 2**20:.1f} MiB "
              f"({grown / (users * 6):.0f} bytes an index key), {direct.dbsize()} keys")
    finally:
        direct.close()
        await runner.cleanup()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
