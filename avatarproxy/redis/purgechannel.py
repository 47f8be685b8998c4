"""The purge channel: how ``avatarproxy purge`` tells every running replica.

``announce`` publishes a person's key; each replica's ``PurgeListener``
subscribes for the life of the process and hands what it hears to a callback
(``purge`` drops the person from the memory tier: what a purge does is not
this module's business). The subscription has no read timeout, since it is
idle most of the time, so it is PINGed when idle and given up when the PONG
is late; it is set up again, through another node in a Cluster, after any
failure. An outage is logged when it starts and when it ends, and shown by
``avatarproxy_purge_subscribed``.

The channel is named like the keys, ``<cache.key_prefix>purge``, so
deployments sharing one Redis (each its own prefix) do not empty each other's
memory tiers. It used to be ``avatarproxy:purge`` whatever the prefix: for
one release ``announce`` publishes there too, so replicas not yet upgraded in
a rolling upgrade still hear it (remove ``LEGACY_CHANNEL`` in the next).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError

from .. import metrics
from .connection import REDIS_FAILURES, RedisConnection

log = logging.getLogger(__name__)

# What to do with a purged person's key; True if it was acted on (a key that is
# no subject is not).
OnPurge = Callable[[str], Awaitable[bool]]

# The channel of every deployment before the prefix: published on for one more
# release (a Pub/Sub channel is not a key: no slot, any node hears it).
LEGACY_CHANNEL = "avatarproxy:purge"


def channel(key_prefix: str) -> str:
    """The deployment's purge channel: ``avatarproxy:purge`` with the default prefix."""
    return f"{key_prefix}purge"


class SilentSubscription(RedisConnectionError):
    """The subscription did not answer a PING: a dead connection nobody closed."""


async def announce(connection: RedisConnection, key_prefix: str, subject_key: str) -> int:
    """Tell running replicas; the number that heard it."""
    client, run = connection.client, connection.run
    channels = [channel(key_prefix)]
    heard = int(await run(client.publish(channels[0], subject_key)))
    if channels[0] != LEGACY_CHANNEL:
        try:
            heard += int(await run(client.publish(LEGACY_CHANNEL, subject_key)))
            channels.append(LEGACY_CHANNEL)
        except NoPermissionError:
            # An ACL that grants only the new channel: nobody old is left to tell.
            log.debug("no permission to publish on %s; skipped", LEGACY_CHANNEL)
    if isinstance(client, RedisCluster):
        # A PUBLISH reaches every node but counts the subscribers of its own only.
        heard = await _cluster_subscribers(connection, client, channels)
    return heard


async def _cluster_subscribers(connection: RedisConnection, client: RedisCluster,
                               channels: list[str]) -> int:
    total = 0
    for node in client.get_nodes():
        try:
            replies = await connection.run(client.pubsub_numsub(*channels, target_nodes=node))
        except REDIS_FAILURES:
            continue  # a node that is down has nobody listening
        total += sum(int(count) for _, count in replies)
    return total


class PurgeListener:
    """Subscribes to ``channel`` for the life of the application."""

    def __init__(self, connection: RedisConnection, channel: str, on_purge: OnPurge, *,
                 ping_seconds: float = 30.0, retry_seconds: float = 5.0) -> None:
        # From connection.subscriber: the service's TLS and credentials, no read timeout:
        # so the subscription is PINGed when idle, and dropped when the PONG is late.
        self.ping_seconds = ping_seconds
        self.retry_seconds = retry_seconds
        self._connection = connection
        self._channel = channel
        self._on_purge = on_purge
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Since when no subscription has held (monotonic), and why: an outage is
        # logged when it starts and when it ends, not on every retry.
        self._down_since: float | None = None
        self._down_because = ""
        # For readiness checks and tests: subscribed now; handled an announcement.
        self.subscribed = asyncio.Event()
        self.handled = asyncio.Event()

    async def start(self) -> None:
        metrics.purge_subscribed(False)  # until Redis confirms: the metric exists from now
        self._task = asyncio.create_task(self._run())
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """A listener that ends other than by ``close`` is a bug: say so, loudly."""
        self.subscribed.clear()
        metrics.purge_subscribed(False)  # and let AvatarproxyPurgeSubscriptionDown fire
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        log.error("purge listener stopped: takedowns no longer reach this replica's memory "
                  "until it restarts: %s: %s", type(exc).__name__, exc,
                  exc_info=exc)

    async def _run(self) -> None:
        while not self._closing:
            # Each client the channel can be heard through in turn (in a Cluster,
            # every node: the next at once when one stops), then a pause.
            for client in await self._connection.pubsub_clients():
                try:
                    await self._subscribe(client)
                except REDIS_FAILURES as exc:
                    if self._closing:
                        return
                    self._lost(client, exc)
            await asyncio.sleep(self.retry_seconds)

    def _lost(self, client: Redis, exc: Exception) -> None:
        """No subscription through ``client``: say so once per outage (and again
        only if the reason changes, say from a refused connection to a refused
        password), not once per retry."""
        self.subscribed.clear()
        metrics.purge_subscribed(False)
        because = type(exc).__name__
        if self._down_since is not None and because == self._down_because:
            log.debug("purge channel still unavailable on %s: %s",
                      self._connection.where(client), because)
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._down_because = because
        log.warning("purge channel unavailable on %s; trying again every %g s, and `avatarproxy "
                    "purge` does not reach this process meanwhile",
                    self._connection.failure(exc, client), self.retry_seconds)

    def _confirmed(self, client: Redis) -> None:
        self.subscribed.set()
        metrics.purge_subscribed(True)
        if self._down_since is not None:
            log.info("purge channel subscribed again on %s after %.0f s",
                     self._connection.where(client),
                     time.monotonic() - self._down_since)
            self._down_since = None

    async def _subscribe(self, client: Redis) -> None:
        """Listen through ``client`` until its connection fails."""
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(self._channel)
            await self._listen(pubsub, client)

    async def _listen(self, pubsub: PubSub, client: Redis) -> None:
        """Handle announcements; PING after ``ping_seconds`` of silence, and give the
        connection up if the PONG has not come ``ping_seconds`` later (a NAT or a
        load balancer can drop an idle flow without telling either end)."""
        pinged_at: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self.ping_seconds)
            now = time.monotonic()
            kind = message.get("type") if message else None
            if kind == "subscribe":  # Redis confirmed it
                self._confirmed(client)
            elif kind == "message":
                await self._heard(message["data"])
            elif kind == "pong":
                pinged_at = None
            if pinged_at is not None and now - pinged_at >= self.ping_seconds:
                raise SilentSubscription(f"no PONG in {self.ping_seconds:.0f} s")
            if message is None and pinged_at is None:
                await pubsub.ping()
                pinged_at = now

    async def _heard(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        if await self._on_purge(text):
            self.handled.set()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            # redis-py can swallow a cancellation that lands mid-connect (it
            # becomes a timeout, or is lost); _closing ends the loop and a
            # repeated cancel interrupts a subscription that was set up anyway.
            for _ in range(10):
                self._task.cancel()
                done, _ = await asyncio.wait({self._task}, timeout=0.5)
                if done:
                    if not self._task.cancelled():
                        self._task.exception()  # retrieved: nothing to report at shutdown
                    break
        await self._connection.aclose()
