"""Coalescing across replicas when the event loop lags: two service instances share
the session Redis and the fake Graph, which counts the photo downloads. The lag is
made by blocking the loop (``time.sleep`` in the test), never by loading the machine.

A Redis reply that waited behind the blocked loop must not read as "Redis down":
that is the command deadline's business (``cache.redis_timeout_seconds``), so these
tests give Redis commands all the time they need and look at the wait alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from appclient import Client, MakeClient, get

from avatarproxy.coalesce import ReplicaCoalescer
from avatarproxy.redis.connection import connect
from avatarproxy.redis.coordination import DownloadLocks, SharedKeys
from avatarproxy.redis.link import RedisLink
from avatarproxy.redis.settings import RedisSettings
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"
WAIT = 2.0  # cache.coalesce_wait_seconds, its default
# Generous: neither a Redis reply nor the request's answer is cut short by the lag.
PATIENT = {"cache__coalesce_wait_seconds": WAIT, "cache__redis_timeout_seconds": 30,
           "server__request_deadline_seconds": 60}


def downloads(fake_graph: Any) -> int:
    return fake_graph.graph.count(lambda r: r.raw_path.endswith("$value"))


async def until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def waiting_for_the_holder(holder: Client, waiter: Client, fake_graph: Any,
                                 download_seconds: float) -> tuple[Any, Any]:
    """``holder`` downloading Adele's photo (it takes ``download_seconds``) and
    ``waiter`` waiting for it: their requests, still running."""
    fake_graph.graph.fault("slow", path_contains="$value", delay=download_seconds)
    first = asyncio.ensure_future(get(holder, f"/avatar/{ADELE}/48"))
    await until(lambda: downloads(fake_graph) == 1)  # it holds the lock
    second = asyncio.ensure_future(get(waiter, f"/avatar/{ADELE}/48"))
    # Its flights: the render, and the download it shares with the other replica.
    await until(lambda: waiter.app[HANDLING].service.fetches_in_flight == 2)
    await asyncio.sleep(0)  # the shared download's first step (its wait begins) has run
    return first, second


async def test_a_waiter_whose_loop_lagged_past_its_wait_takes_the_holders_photo(
        make_client: MakeClient, fake_graph: Any) -> None:
    holder, waiter = await make_client(**PATIENT), await make_client(**PATIENT)
    # The holder's download ends after the lag, well within the waiter's wait
    # counted without the lag; counted in wall-clock time, the wait is over first.
    first, second = await waiting_for_the_holder(holder, waiter, fake_graph, WAIT + 1.5)
    time.sleep(WAIT + 0.5)  # noqa: ASYNC251 - the loop lags: nothing runs meanwhile
    answers = await asyncio.gather(first, second)
    assert [(status, headers["X-Avatar-Source"]) for status, headers, _ in answers] == [
        (200, "photo")] * 2
    assert answers[0][2] == answers[1][2]
    assert downloads(fake_graph) == 1


async def test_a_waiter_on_a_loop_that_runs_freely_still_gives_up_after_its_wait(
        make_client: MakeClient, fake_graph: Any) -> None:
    settings = {**PATIENT, "cache__coalesce_wait_seconds": 0.3}
    holder, waiter = await make_client(**settings), await make_client(**settings)
    first, second = await waiting_for_the_holder(holder, waiter, fake_graph, 5)
    status, headers, _ = await second  # it fetched for itself, not waiting 5 s
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert not first.done()
    assert downloads(fake_graph) == 2
    assert (await first)[0] == 200


class TimerCounting(asyncio.SelectorEventLoop):
    """asyncio's loop, counting the timers it is asked for."""

    timers = 0

    def call_at(self, when: float, callback: Any, *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_waiters_count_their_wait_on_one_clock(redis_url: str) -> None:
    """100 keys waiting for other replicas' downloads: the loop's own time is kept by
    one tick every 20 ms, not one per waiter (before: 100 ticks every 20 ms, 11 % of
    a core for 1,000 waiters)."""
    waiters = 100

    async def scenario() -> None:
        link = RedisLink(connect(RedisSettings(redis_url=redis_url)))
        shared = SharedKeys("clock-test:", "1")
        locks = DownloadLocks(link, shared)
        keys = [f"clock-test:{index}" for index in range(waiters)]
        for key in keys:
            await locks.try_lock(key, "another replica's token", 30)
        looking, found = 0, asyncio.Event()

        async def lookup() -> bytes:  # the holder's photo, once the test has counted
            nonlocal looking
            looking += 1
            await found.wait()
            return b"photo"

        coalescer = ReplicaCoalescer(locks, wait_seconds=30, lock_seconds=30)
        waiting = [asyncio.create_task(coalescer.run(key, lookup, lookup)) for key in keys]
        await until(lambda: looking == waiters)  # every one waiting, its clock running
        loop = asyncio.get_running_loop()
        assert isinstance(loop, TimerCounting)
        before = loop.timers
        await asyncio.sleep(0.2)  # a timer of its own
        assert loop.timers - before <= 0.2 / 0.02 + 5  # ticks of one clock, a few late
        found.set()
        assert await asyncio.gather(*waiting) == [b"photo"] * waiters
        await link.call("DEL", link.client.delete(*map(shared.lock, keys)))
        await link.close()

    with asyncio.Runner(loop_factory=TimerCounting) as runner:
        runner.run(scenario())
