"""Redis over a network: the service's Redis traffic passes through a fault
proxy (tests/faultproxy.py) with latency, segments, resets and stalls. Rows of
the failure table (docs/operations.md) that involve Redis, and the purge subscription."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from appclient import Client, MakeClient, get, with_settings
from faultproxy import FaultProxy, Faults
from loopback import free_port
from photos import realistic_portrait
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redisservers import start_server

from avatarproxy.cli import main
from avatarproxy.purge import LISTENER
from avatarproxy.redis.purgechannel import PurgeListener
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"  # 648x648 photo
ALEX = "alex.wilber@contoso.com"
MEGAN = "megan.bowen@contoso.com"
JPEG = {"Accept": "image/jpeg"}
APP_SCOPE = "Application/ApplicationAndTenant/app-id/tenant-id"


@pytest.fixture
def via_proxy(make_client: MakeClient, redis_proxy: FaultProxy) -> MakeClient:
    """``make_client`` whose Redis traffic goes through ``redis_proxy``."""
    return with_settings(make_client, cache__redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0")


def photo_downloads(fake_graph: Any) -> int:
    return fake_graph.graph.count("/$value")


async def test_large_images_cross_replicas_over_a_slow_segmented_link(
        via_proxy: MakeClient, redis_proxy: FaultProxy, fake_graph: Any) -> None:
    fake_graph.graph.set_photo(ADELE, realistic_portrait(648, 648, "#0b5394", "#6fa8dc",
                                                         "#f6d7b0"))
    redis_proxy.faults = Faults(segment=1400, pause=0.0005, latency=0.005)
    one, two = (await via_proxy(cache__redis_timeout_seconds=3.0),
                await via_proxy(cache__redis_timeout_seconds=3.0))
    _, headers, first = await get(one, f"/avatar/{ADELE}/600", headers=JPEG)
    assert headers["X-Avatar-Source"] == "photo"
    # The other replica's memory is empty: the ~150 KB image comes whole from Redis.
    _, headers, second = await get(two, f"/avatar/{ADELE}/600", headers=JPEG)
    assert (headers["X-Avatar-Source"], second) == ("photo", first)
    assert photo_downloads(fake_graph) == 1
    assert two.app[HANDLING].service.health()["redis"] == "ok"


async def test_two_replicas_missing_together_download_once_through_a_laggy_redis(
        via_proxy: MakeClient, redis_proxy: FaultProxy, fake_graph: Any) -> None:
    redis_proxy.faults = Faults(latency=0.01)
    replicas = [await via_proxy(cache__redis_timeout_seconds=3.0) for _ in range(2)]
    answers = await asyncio.gather(*(get(c, f"/avatar/{ALEX}/96", headers=JPEG)
                                     for c in replicas))
    assert [a[1]["X-Avatar-Source"] for a in answers] == ["photo", "photo"]
    assert answers[0][2] == answers[1][2]
    assert photo_downloads(fake_graph) == 1  # the lock held across the lag


async def test_a_throttle_pause_reaches_the_other_replica_through_a_laggy_redis(
        via_proxy: MakeClient, redis_proxy: FaultProxy, fake_graph: Any) -> None:
    redis_proxy.faults = Faults(latency=0.01)
    one, two = (await via_proxy(cache__redis_timeout_seconds=3.0),
                await via_proxy(cache__redis_timeout_seconds=3.0))
    fake_graph.graph.inject(429, headers={"Retry-After": "30", "x-ms-throttle-scope": APP_SCOPE})
    _, headers, _ = await get(one, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "initials"
    calls = fake_graph.graph.count()
    _, headers, _ = await get(two, f"/avatar/{MEGAN}/48")
    assert headers["X-Avatar-Source"] == "initials"
    assert fake_graph.graph.count() == calls  # paused through Redis: Graph left alone


@pytest.mark.parametrize("fault", [Faults(stall=True), Faults(reset_after=100)],
                         ids=["stalled", "reset"])
async def test_a_failing_redis_costs_at_most_its_timeout_and_photos_still_come(
        via_proxy: MakeClient, redis_proxy: FaultProxy, fault: Faults) -> None:
    redis_proxy.faults = fault
    client = await via_proxy(cache__redis_timeout_seconds=0.3, cache__redis_retry_seconds=30)
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")  # from Graph
    assert headers["Cache-Control"].startswith("public, max-age=3600")
    assert client.app[HANDLING].service.health()["redis"] == "down"
    accepted = redis_proxy.accepted
    # Skipped after the failure: the next miss does not wait on Redis again.
    status, headers, _ = await get(client, f"/avatar/{ALEX}/48", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")
    assert redis_proxy.accepted == accepted


# -- the purge subscription --------------------------------------------------------

async def _purge_and_wait(listener: PurgeListener, client: Client, fake_graph: Any,
                          config: Path, upn: str, told: int | None = 1) -> None:
    """Show ``upn``'s photo, take it down in the directory, run `avatarproxy purge`,
    and check this replica stopped serving it at once (its memory would keep it)."""
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    assert (await get(client, f"/avatar/{upn}/48"))[1]["X-Avatar-Source"] == "photo"
    fake_graph.graph.set_photo(upn, None)
    listener.handled.clear()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert await asyncio.to_thread(main, ["purge", "--config", str(config), upn]) == 0
    if told is not None:
        assert f"{told} running replicas told" in out.getvalue()
    async with asyncio.timeout(10):
        await listener.handled.wait()
    assert (await get(client, f"/avatar/{upn}/48"))[1]["X-Avatar-Source"] == "initials"


async def _until_unsubscribed(listener: PurgeListener) -> None:
    for _ in range(500):  # 10 s
        if not listener.subscribed.is_set():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the subscriber never noticed")


async def test_the_purge_subscription_survives_a_reset_and_a_silently_dead_link(
        via_proxy: MakeClient, redis_proxy: FaultProxy, redis_url: str, fake_graph: Any,
        tmp_path: Path) -> None:
    config = tmp_path / "avatarproxy.toml"
    config.write_text(f'[cache]\nredis_url = "{redis_url}"\n')  # purge talks to Redis directly
    client = await via_proxy(cache__purge_ping_seconds=1.0)
    listener = client.app[LISTENER]
    listener.retry_seconds = 0.1
    await _purge_and_wait(listener, client, fake_graph, config, ADELE)
    subscriptions = redis_proxy.accepted
    # A reset: the subscriber sees it at once and subscribes again.
    redis_proxy.cut()
    await _until_unsubscribed(listener)
    await _purge_and_wait(listener, client, fake_graph, config, ALEX)
    assert redis_proxy.accepted > subscriptions
    subscriptions = redis_proxy.accepted
    # A link that silently drops everything: only the unanswered PING shows it.
    redis_proxy.silence()
    await _until_unsubscribed(listener)  # 1 s of silence, a PING, 1 s without PONG
    # (Redis still counts the silenced subscription until TCP gives up on it.)
    await _purge_and_wait(listener, client, fake_graph, config, MEGAN, told=None)
    assert redis_proxy.accepted > subscriptions


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # 20 s
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


def _lines(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


async def test_a_redis_outage_is_logged_once_with_where_and_what_to_check_and_its_end_once(
        via_proxy: MakeClient, redis_proxy: FaultProxy, caplog: pytest.LogCaptureFixture,
        ) -> None:
    caplog.set_level(logging.INFO, logger="avatarproxy")
    client = await via_proxy(cache__redis_retry_seconds=0.2)
    listener = client.app[LISTENER]
    listener.retry_seconds = 0.05
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    # Redis goes away: behind the proxy every connection is refused.
    redis_port, redis_proxy.target_port = redis_proxy.target_port, free_port()
    redis_proxy.cut()
    await _until_unsubscribed(listener)
    tries = redis_proxy.accepted
    await _until(lambda: redis_proxy.accepted >= tries + 20, "20 attempts to subscribe again")
    assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
    # Redis is back.
    redis_proxy.target_port = redis_port
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    await asyncio.sleep(0.3)  # past cache.redis_retry_seconds: the next lookup tries Redis
    assert (await get(client, f"/avatar/{ALEX}/48"))[1]["X-Avatar-Source"] == "photo"
    where = f"127.0.0.1:{redis_proxy.port}"
    # Twenty failed attempts, one line for the outage, one for its end.
    down = _lines(caplog, "avatarproxy.redis.purgechannel", logging.WARNING)
    assert len(down) == 1, down
    assert down[0].startswith(f"purge channel unavailable on {where}: ")
    assert "check cache.redis_url" in down[0]
    up = _lines(caplog, "avatarproxy.redis.purgechannel", logging.INFO)
    assert len(up) == 1 and re.fullmatch(
        rf"purge channel subscribed again on {re.escape(where)} after \d+ s", up[0]), up
    # The lines of Redis' health (the cache tier's, among others) name Redis and the
    # setting as well.
    cache_down = _lines(caplog, "avatarproxy.redis.link", logging.WARNING)
    assert cache_down and all(f"{where}: " in line and "check cache.redis_url" in line
                              for line in cache_down), cache_down
    assert _lines(caplog, "avatarproxy.redis.link", logging.INFO) == [f"redis is back at {where}"]


async def test_redis_errors_name_the_password_setting_and_never_the_password(
        make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="avatarproxy")
    server = start_server(tmp_path / "redis", "--requirepass", "the-right-one",
                          password="the-right-one")
    try:
        wrong = "not-the-password-Zq81"
        client = await make_client(cache__redis_url=f"redis://:{wrong}@127.0.0.1:{server.port}/0")
        listener = client.app[LISTENER]
        listener.retry_seconds = 0.05
        assert (await get(client, f"/avatar/{ADELE}/48"))[1]["X-Avatar-Source"] == "photo"
        await _until(lambda: _lines(caplog, "avatarproxy.redis.purgechannel", logging.WARNING),
                     "the purge listener's warning")
    finally:
        server.stop()
    # The purge listener's line, and the one line of Redis' health (which the cache tier,
    # the rate limiter, the locks and the pauses share).
    lines = {name: _lines(caplog, f"avatarproxy.{name}", logging.WARNING)
             for name in ("redis.purgechannel", "redis.link")}
    assert all(lines.values()), lines
    for line in (line for found in lines.values() for line in found):
        assert f"127.0.0.1:{server.port}: AuthenticationError" in line, line
        assert "check cache.redis_password_file (or the password in cache.redis_url)" in line
    assert not [r for r in caplog.records if wrong in r.getMessage()]


async def test_a_healthy_idle_subscription_answers_its_pings_and_stays(
        via_proxy: MakeClient, redis_proxy: FaultProxy) -> None:
    client = await via_proxy(cache__purge_ping_seconds=0.5)
    listener = client.app[LISTENER]
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    connections = redis_proxy.accepted
    await asyncio.sleep(3)  # several PINGs, each answered
    assert listener.subscribed.is_set()
    assert redis_proxy.accepted == connections  # never dropped and subscribed again


# -- redis-py's own errors for a torn connection ----------------------------------

class TornConnections:
    """redis-py as it behaves in the versions and failovers of #3546, #3835 and #4287:
    a connection torn down under a command raises TypeError or AttributeError from
    inside redis-py, not ConnectionError. Counts the errors it raised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.raised = 0
        read, send = AbstractConnection.read_response, AbstractConnection.send_packed_command

        async def read_response(conn: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
            try:
                return await read(conn, *args, **kwargs)
            except RedisConnectionError:
                self.raised += 1
                raise AttributeError("'NoneType' object has no attribute 'feed'") from None

        async def send_packed_command(conn: AbstractConnection, *args: Any,
                                      **kwargs: Any) -> None:
            try:
                await send(conn, *args, **kwargs)
            except RedisConnectionError:
                self.raised += 1
                raise TypeError("'NoneType' object is not callable") from None

        monkeypatch.setattr(AbstractConnection, "read_response", read_response)
        monkeypatch.setattr(AbstractConnection, "send_packed_command", send_packed_command)


async def test_redis_py_torn_connection_errors_read_as_redis_unavailable(
        via_proxy: MakeClient, redis_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await via_proxy(cache__redis_retry_seconds=30)
    listener = client.app[LISTENER]
    listener.retry_seconds = 0.1
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    torn = TornConnections(monkeypatch)
    # Every connection is reset under whatever command it carries.
    redis_proxy.faults = Faults(reset_after=0)
    redis_proxy.cut()
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48", headers=JPEG)
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")  # from Graph, no 500
    assert client.app[HANDLING].service.health()["redis"] == "down"
    # The purge subscription took it for Redis failing too, and keeps trying.
    await _until_unsubscribed(listener)
    assert torn.raised > 0
    accepted = redis_proxy.accepted
    redis_proxy.faults = Faults()
    async with asyncio.timeout(10):
        await listener.subscribed.wait()
    assert redis_proxy.accepted > accepted
