"""Takedown across replicas: ``avatarproxy purge`` deletes a person's keys from
Redis, then announces the purge on a Redis channel; every running replica
listens and drops the person from its own memory tier, so no replica keeps
serving a copy until its metadata would have gone stale.

A replica that is disconnected when the announcement is sent misses it; its
copy then lives until ``cache.metadata_ttl_seconds`` (the README says so).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .cache import AvatarCache
from .errors import BadRequest
from .inputs import parse_subject
from .redisconn import REDIS_FAILURES, RedisClient, RedisConnection

log = logging.getLogger(__name__)

CHANNEL = "avatarproxy:purge"  # a Pub/Sub channel: not a key, no prefix or slot
_RETRY_SECONDS = 5.0


async def announce(client: RedisClient, subject_key: str) -> int:
    """Tell running replicas; the number that heard it."""
    return int(await client.publish(CHANNEL, subject_key))


class PurgeListener:
    """Subscribes to ``CHANNEL`` for the life of the application."""

    def __init__(self, connection: RedisConnection, cache: AvatarCache) -> None:
        # From redisconn.subscriber: the service's TLS and credentials, no read timeout.
        self._connection = connection
        self._client = connection.client
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # For readiness checks and tests: subscribed now; handled an announcement.
        self.subscribed = asyncio.Event()
        self.handled = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._closing:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "subscribe":  # Redis confirmed it
                            self.subscribed.set()
                        elif message.get("type") == "message":
                            await self._forget(message["data"])
            except REDIS_FAILURES as exc:
                self.subscribed.clear()
                if self._closing:
                    return
                log.warning("purge channel unavailable, retrying in %.0f s: %s",
                            _RETRY_SECONDS, type(exc).__name__)
                await asyncio.sleep(_RETRY_SECONDS)

    async def _forget(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        try:
            subject = parse_subject(text)
        except BadRequest:
            return  # not ours to act on
        await self._cache.purge(subject, shared=False)
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


LISTENER: web.AppKey[PurgeListener] = web.AppKey("purge_listener", PurgeListener)
