"""How a Redis command is awaited: the one deadline, the wait for a connection, and
what redis-py raises for a torn connection.

Every command and pipeline goes through ``run`` (``RedisConnection.run``): one
deadline, ``cache.redis_timeout_seconds`` of the loop's own time (``deadline``),
a wait for one of the connection's slots included. The connections have no read
timeout (redis-py's costs a task per write on Python 3.11), so a bare
``await client.get()`` would have none at all: nothing else awaits one. Opening a
connection is not counted in that deadline: it pauses it, and each step has
``socket_connect_timeout`` of its own (TCP and TLS, each reply of the handshake,
in the loop's own time too; in Sentinel mode, each Sentinel asked for the
master), so a Redis far away can still be reached and a silent Sentinel does not
stop the others being asked.

Subscriptions (the purge channel) are the exception: they idle for minutes, so
their reads have no deadline; ``_GuardedPubSub`` only translates torn
connections, and the purge listener finds a silent one with its own PING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from ..deadline import deadline, paused

T = TypeVar("T")
_PACKAGE = __name__.partition(".")[0] + "."  # avatarproxy., not avatarproxy.redis.


class TornConnection(RedisConnectionError):
    """redis-py raised AttributeError or TypeError: a connection torn down under a command."""


class NoFreeConnection(MaxConnectionsError):
    """The deadline passed before one of the connection's slots was free: a burst of
    commands, not Redis down (``RedisLink.call`` counts it as refused)."""


async def run(pending: Awaitable[T], seconds: float, slots: asyncio.Semaphore) -> T:
    """``pending`` within ``seconds``, a wait for one of ``slots`` included. Cut off
    mid-reply (by the deadline, or with its request), a command's connection is
    closed by redis-py, never handed on with the reply due: tests/test_redis_cancel.py.
    Never started (cancelled or out of time while waiting for a slot), it is closed."""
    started = False
    try:
        async with deadline(seconds), slots:
            started = True
            return await _guarded(pending)
    except TimeoutError:
        if not started:
            raise NoFreeConnection("no free Redis connection within the deadline") from None
        raise
    finally:
        if not started:
            discard(pending)


async def _guarded(pending: Awaitable[T]) -> T:
    """Await one redis-py call: the one place its torn-connection errors are caught.

    redis-py's async clients raise AttributeError or TypeError when a
    connection is torn down under a command ("'NoneType' object has no
    attribute 'writelines'" with a Cluster master killed under load; redis-py
    #3546, #3835, #4287); they become TornConnection, a RedisError. The same
    types raised by our own code (even in a callback redis-py made, such as the
    password file) are bugs and go on as they are.
    """
    try:
        return await pending
    except (AttributeError, TypeError) as exc:
        if _raised_by_us(exc):
            raise
        raise TornConnection(f"{type(exc).__name__}: {exc}") from exc


def _raised_by_us(exc: BaseException) -> bool:
    """Whether a frame of this package lies between ``_guarded`` and the raise (this
    module's own frames only pass redis-py's calls on: ``_OwnBudget``)."""
    frame = exc.__traceback__.tb_next if exc.__traceback__ else None  # past _guarded()
    while frame is not None:
        module = frame.tb_frame.f_globals.get("__name__", "")
        if module.startswith(_PACKAGE) and module != __name__:
            return True
        frame = frame.tb_next
    return False


def discard(pending: Awaitable[Any]) -> None:
    """Close a coroutine that will never run (no 'never awaited' warning)."""
    close = getattr(pending, "close", None)
    if close is not None:
        close()


class _GuardedPubSub(PubSub):
    """A subscription whose redis-py awaits have torn connections translated too."""

    async def execute_command(self, *args: EncodableT) -> Any:
        return await _guarded(super().execute_command(*args))

    # redis-py's signature, timeout included
    async def parse_response(self, block: bool = True, timeout: float = 0) -> Any:  # noqa: ASYNC109
        return await _guarded(super().parse_response(block, timeout))


class Subscriber(Redis):
    def pubsub(self, **kwargs: Any) -> PubSub:
        return _GuardedPubSub(self.connection_pool, event_dispatcher=self._event_dispatcher,
                              **kwargs)


class _OwnBudget:
    """Opening a connection: the command's deadline paused, each step within
    ``socket_connect_timeout`` of the loop's own time (the connection's commands
    have no read timeout)."""

    socket_connect_timeout: float | None
    is_connected: bool

    # redis-py calls ``connect`` at every checkout: a connection already open costs
    # nothing more (pausing moves the deadline's timer: 40,000 instructions a GET).
    async def connect(self) -> None:
        if self.is_connected:
            return
        with paused():  # Sentinel mode: asking the Sentinels for the master, too
            await super().connect()  # type: ignore[misc]

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        if self.is_connected:
            return
        with paused():
            await super().connect_check_health(  # type: ignore[misc]
                check_health=check_health, retry_socket_connect=retry_socket_connect)

    # redis-py bounds these steps in wall-clock time, and a reply that came while the
    # loop was busy would fail them: Redis taken for down. Ours forgive the lag.
    async def _connect(self) -> None:
        seconds, self.socket_connect_timeout = self.socket_connect_timeout, None
        try:
            async with _step(seconds):  # TCP and TLS
                await super()._connect()  # type: ignore[misc]
        finally:
            self.socket_connect_timeout = seconds

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        # HELLO/AUTH, SELECT...: the handshake reads through this instance attribute,
        # so commands read as they are (no frame more per reply).
        setattr(self, "read_response", self._handshake_reply)  # noqa: B010 - for mypy
        try:
            await super().on_connect_check_health(check_health)  # type: ignore[misc]
        finally:
            delattr(self, "read_response")

    async def _handshake_reply(self, *args: Any, **kwargs: Any) -> Any:
        """One reply of the handshake within ``socket_connect_timeout``."""
        connection = cast("AbstractConnection", self)
        try:
            async with _step(self.socket_connect_timeout):
                return await type(connection).read_response(connection, *args, **kwargs)
        except TimeoutError:  # cut off mid-reply: redis-py has closed the connection
            raise RedisTimeoutError(f"Timeout reading from {connection._host_error()}") from None


def _step(seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
    """One step of opening a connection: ``seconds`` of the loop's own time, if any."""
    return deadline(seconds) if seconds is not None else contextlib.nullcontext()


class _Connection(_OwnBudget, Connection):
    pass


class _SSLConnection(_OwnBudget, SSLConnection):
    pass


class _UnixConnection(_OwnBudget, UnixDomainSocketConnection):
    pass


class _SentinelConnection(_OwnBudget, SentinelManagedConnection):
    pass


class _SentinelSSLConnection(_OwnBudget, SentinelManagedSSLConnection):
    pass


_OWN_BUDGET: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _Connection, SSLConnection: _SSLConnection,
    UnixDomainSocketConnection: _UnixConnection,
    SentinelManagedConnection: _SentinelConnection,
    SentinelManagedSSLConnection: _SentinelSSLConnection}


def own_budget(kind: type[AbstractConnection]) -> type[AbstractConnection]:
    """redis-py's connection class ``kind``, opening with a budget of its own."""
    return _OWN_BUDGET[kind]


def own_budget_nodes(cluster: RedisCluster, tls: bool) -> None:
    """The same for a Cluster's nodes, known and to come (redis-py takes no class)."""
    kind = cast("type[Connection]", own_budget(SSLConnection if tls else Connection))
    cluster.connection_kwargs["connection_class"] = kind  # the nodes manager's too
    for node in cluster.startup_nodes:
        node.connection_class = kind
