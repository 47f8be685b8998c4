"""The one deadline of a Redis command: a loop that lags is not a Redis that is down.

Each scenario runs on asyncio's loop and on uvloop (the service's): they order
a late timer and a ready socket differently. The loop is blocked with
``time.sleep``, as a CPU-bound callback would block it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import uvloop
from faultproxy import FaultProxy, Faults
from redis.asyncio.connection import AbstractConnection
from yarl import URL

from avatarproxy.deadline import deadline, paused
from avatarproxy.redis.connection import connect
from avatarproxy.redis.link import RedisLink
from avatarproxy.redis.settings import RedisSettings

TIMEOUT = 0.2
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    def run(scenario: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            await scenario()
        RUNNERS[request.param](main())
    return run


def link_to(url: str) -> RedisLink:
    return RedisLink(connect(RedisSettings(redis_url=url, redis_timeout_seconds=TIMEOUT)),
                     retry_after=30)


@asynccontextmanager
async def proxied(redis_url: str, faults: Faults, db: int = 0) -> AsyncIterator[RedisLink]:
    """A link to database ``db`` of ``redis_url`` through a fault proxy; both closed after."""
    proxy = await FaultProxy.start(URL(redis_url).port or 0, faults)
    link = link_to(f"redis://127.0.0.1:{proxy.port}/{db}")
    try:
        yield link
    finally:
        await link.close()
        await proxy.close()


@contextmanager
def busy_turns(seconds: float) -> Iterator[list[None]]:
    """While inside, every turn of the running loop blocks it for ``seconds``; the
    list yielded grows by one item per turn that started inside."""
    loop = asyncio.get_running_loop()
    turns: list[None] = []
    busy = True

    def hog() -> None:
        if busy:
            block_loop(seconds)
            turns.append(None)
            loop.call_soon(hog)

    block_loop(seconds)  # this turn too, uncounted: it started before
    loop.call_soon(hog)
    try:
        yield turns
    finally:
        busy = False


def block_loop(seconds: float) -> None:
    """What a CPU-bound callback does to every other coroutine of the loop."""
    time.sleep(seconds)


async def in_flight(link: RedisLink, key: str) -> asyncio.Task[Any]:
    """A GET of ``key`` sent, its reply not read yet."""
    task = asyncio.create_task(link.call("GET", link.client.get(key)))
    await asyncio.sleep(0)  # the task checks a connection out, writes, waits to read
    return task


def test_a_reply_that_waited_behind_a_blocked_loop_is_an_answer(
        redis_url: str, run: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
    async def scenario() -> None:
        link = link_to(redis_url)
        await link.client.set("k", b"photo")
        assert await link.call("GET", link.client.get("k")) == b"photo"  # connected
        task = await in_flight(link, "k")
        block_loop(TIMEOUT * 5)  # Redis answered long ago; nobody read it
        assert await task == b"photo"
        assert link.healthy
        await link.close()
    run(scenario)


def test_a_handshake_reply_that_waited_behind_a_blocked_loop_is_an_answer(
        redis_url: str, run: Callable[[Callable[[], Awaitable[None]]], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A new connection to database 3 sends SELECT, through a proxy 10 ms away each
    # way, and waits for the reply: the loop is blocked meanwhile, for twice the
    # timeout. Before, each handshake reply had a wall-clock timeout, over before
    # the reply could be read: the command failed and Redis read as down.
    send_command = AbstractConnection.send_command

    async def send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        await send_command(self, *args, **kwargs)
        if args[0] == "SELECT":  # the next turn, when the reply is being waited for
            asyncio.get_running_loop().call_soon(block_loop, TIMEOUT * 2)

    monkeypatch.setattr(AbstractConnection, "send_command", send)

    async def scenario() -> None:
        async with proxied(redis_url, Faults(latency=0.01), db=3) as link:
            assert await link.call("SET", link.client.set("handshake", b"v")) is True
            assert link.healthy
    run(scenario)


def test_a_stalled_redis_reads_as_down_within_about_the_timeout(
        redis_url: str, run: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
    async def scenario() -> None:
        async with proxied(redis_url, Faults(stall=True)) as link:
            started = time.monotonic()
            assert await link.call("GET", link.client.get("k")) is None
            elapsed = time.monotonic() - started
            assert not link.healthy
            assert TIMEOUT * 0.9 <= elapsed < TIMEOUT * 15
    run(scenario)


def test_a_stalled_redis_under_a_blocked_loop_is_still_given_up_on(
        redis_url: str, run: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
    async def scenario() -> None:
        async with proxied(redis_url, Faults(stall=True)) as link:
            task = await in_flight(link, "k")
            block_loop(TIMEOUT * 5)
            assert await task is None  # the lag given back, and then it timed out
            assert not link.healthy
    run(scenario)


def test_a_loop_that_never_catches_up_still_ends_the_wait(
        run: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
    async def scenario() -> None:
        # every turn of the loop takes longer than the deadline
        with busy_turns(0.03), pytest.raises(TimeoutError):
            async with deadline(0.02):
                await asyncio.Event().wait()
    run(scenario)


def test_a_loop_that_never_catches_up_gives_one_more_deadline_at_most(
        run: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
    """Counted in turns of a loop whose every turn takes half the deadline, against
    the documented bound (deadline.py): twice the deadline plus six turns. The timer
    runs late, gets the lag back once (one deadline at most), runs late again and
    cancels; a turn more to unwind. Before: each late run got its lateness back
    again, 20 deadlines' worth (41 turns here)."""
    async def scenario() -> None:
        with busy_turns(0.01) as turns, pytest.raises(TimeoutError):
            async with deadline(0.02):
                await asyncio.Event().wait()
        assert len(turns) <= 2 * 2 + 6  # twice the deadline (2 turns) + 6 turns
    run(scenario)


async def test_a_cancellation_from_outside_is_no_timeout() -> None:
    async def wait() -> None:
        async with deadline(10):
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_started_inside_a_deadline_that_ended_can_still_pause_it() -> None:
    # The task inherits the running deadline (a context variable); pausing it after
    # the deadline ended re-armed a dead timer: "Cannot change state of finished
    # Timeout", raised in the loop's exception handler.
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    ended = asyncio.Event()

    async def opens_a_connection_later() -> None:
        await ended.wait()
        with paused():
            await asyncio.sleep(0)

    async with deadline(0.01):
        task = asyncio.create_task(opens_a_connection_later())
    ended.set()
    await task
    await asyncio.sleep(0.05)  # past where the re-armed timer would fire
    loop.set_exception_handler(None)
    assert errors == []
