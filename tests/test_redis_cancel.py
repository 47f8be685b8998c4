"""A Redis command cut off mid-flight never leaves its reply for the connection's next user.

The CVE-2023-28858 class of bug: a command cancelled after it was sent (by its
deadline, or with the request of a client that went away) returns its
connection to the pool with the reply still on its way; the next command on
that connection reads it as its own, and one person's photo is served as
another's. Here many workers GET and pipeline keys whose values name their
key, through a fault proxy that splits, delays, stalls and resets the
traffic, and cancel their commands at random points (seeded); every answer
must belong to its keys."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

import redis
from faultproxy import FaultProxy, Faults
from yarl import URL

from avatarproxy.redis.connection import connect
from avatarproxy.redis.link import RedisLink
from avatarproxy.redis.settings import RedisSettings

KEYS = 200
WORKERS = 24
SECONDS = 6.0  # the run stops by itself after this long
PROFILES = (  # what the network does to each new connection, switched as the run goes
    Faults(segment=7, pause=0.001, latency=0.002),
    Faults(segment=512, latency=0.004),
    Faults(latency=0.001),
    Faults(segment=3, pause=0.0005),
    Faults(stall=True),
)


def value(key: str, rng: random.Random) -> bytes:
    """A value that names its key, long enough to take several segments."""
    return f"{key}|".encode() * rng.randint(1, 300)


def belongs(key: str, answer: bytes) -> bool:
    return answer.startswith(f"{key}|".encode()) and answer == answer[:len(key) + 1] * (
        len(answer) // (len(key) + 1))


@dataclass
class Tally:
    answered: int = 0
    cancelled: int = 0  # by the worker, mid-flight or not
    without_redis: int = 0  # deadline, reset, refusal: None
    wrong: int = 0


async def one_command(link: RedisLink, rng: random.Random, tally: Tally) -> None:
    keys = [f"k{rng.randrange(KEYS)}" for _ in range(rng.choice((1, 1, 2, 3)))]
    if len(keys) == 1:
        pending = link.client.get(keys[0])
    else:
        pipe = link.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        pending = pipe.execute()
    task = asyncio.create_task(link.call("GET", pending))
    if rng.random() < 0.4:  # a client that goes away, at any point of the round trip
        await asyncio.sleep(rng.uniform(0, 0.008))
        task.cancel()
    try:
        answer = await task
    except asyncio.CancelledError:
        tally.cancelled += 1
        return
    if answer is None:
        tally.without_redis += 1
        await asyncio.sleep(0.005)  # Redis skipped for a moment: no busy loop
        return
    answers = [answer] if len(keys) == 1 else answer
    tally.answered += 1
    tally.wrong += sum(1 for key, got in zip(keys, answers, strict=True)
                       if not belongs(key, got))


async def worker(link: RedisLink, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await one_command(link, rng, tally)


async def chaos(proxy: FaultProxy, rng: random.Random, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        proxy.faults = rng.choice(PROFILES)
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        if rng.random() < 0.3:
            proxy.cut()  # pooled connections reopen under the new faults


async def test_every_answer_belongs_to_its_key_under_cancellations(redis_url: str) -> None:
    rng = random.Random(14)
    with contextlib.closing(redis.Redis.from_url(redis_url)) as sync:
        sync.mset({f"k{i}": value(f"k{i}", rng) for i in range(KEYS)})
    proxy = await FaultProxy.start(URL(redis_url).port or 0)
    # A deadline short enough to fire under the slow profiles, mid-reply.
    settings = RedisSettings(redis_url=f"redis://127.0.0.1:{proxy.port}/0",
                             redis_timeout_seconds=0.05, redis_retry_seconds=0.01)
    link = RedisLink(connect(settings), retry_after=settings.redis_retry_seconds)
    tally = Tally()
    until = asyncio.get_running_loop().time() + SECONDS
    try:
        await asyncio.gather(chaos(proxy, rng, until),
                             *(worker(link, seed, until, tally) for seed in range(WORKERS)))
    finally:
        await link.close()
        await proxy.close()
    assert tally.wrong == 0, tally
    assert tally.answered and tally.cancelled and tally.without_redis, tally
