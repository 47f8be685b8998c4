"""Redis clients for the ways companies run it: one server, Sentinel, Cluster.

Only redis-py's own clients are used; this module turns ``cache.*`` settings
into one of them. Whatever the mode, each command gets one deadline
(``RedisConnection.run``, see ``commands``) and a quick retry on a broken
connection, so a failover costs a few cache misses and never an error: after a
Sentinel switch the pool asks the Sentinels for the new master when it
reconnects; the Cluster client re-reads the slot map from another node when one
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ..options import file_problem
from . import commands
from .settings import RedisSettings

T = TypeVar("T")

RedisClient = Redis | RedisCluster

# What a failing Redis raises through ``RedisConnection.run`` (torn connections
# included: ``commands.TornConnection``). Redis is a cache here, so each of
# these reads as "Redis unavailable", never a 500. The Cluster client raises
# RedisClusterException (not a RedisError) when no node it knows answers.
REDIS_FAILURES: tuple[type[Exception], ...] = (
    RedisError, RedisClusterException, OSError, TimeoutError)
_HEALTH_CHECK_SECONDS = 30  # PING a connection idle this long before reusing it
MAX_CONNECTIONS = 64  # commands in flight per RedisConnection, any mode


@dataclass(frozen=True, slots=True)
class RedisConnection:
    """A client for the data, and the clients of the Sentinels behind it, if any."""

    client: RedisClient
    # Kept apart from Sentinel.sentinels: redis-py reorders that list during
    # concurrent master discoveries and can lose an entry, leaving it unclosed.
    sentinel_clients: tuple[Redis, ...] = ()
    # Cluster Pub/Sub (see ``subscriber``): a plain client to one node, by host and
    # port, and the node of cache.redis_url.
    node_client: Callable[[str, int], Redis] | None = None
    seed: tuple[str, int] = ("", 0)
    # For log lines (``failure``): where Redis is, and the settings that say so.
    target: str = "Redis"
    settings: str = "cache.redis_url"
    timeout: float = 0.5  # cache.redis_timeout_seconds: see ``run``
    _node_clients: dict[tuple[str, int], Redis] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONNECTIONS))

    async def run(self, pending: Awaitable[T]) -> T:
        """``pending`` (a command, a pipeline) within ``timeout`` of the loop's own time,
        a wait for one of ``MAX_CONNECTIONS`` included: the one way a command is sent
        (``commands.run``). A wait for a slot that outlasts it raises NoFreeConnection."""
        return await commands.run(pending, self.timeout, self._slots)

    async def pubsub_clients(self) -> list[Redis]:
        """Clients a subscription can go through, best first.

        One server or Sentinel: the one client. Cluster: one per node of a
        freshly read slot map (replicas too: a PUBLISH reaches every node's
        subscribers), the node of ``cache.redis_url`` first; so a subscriber
        whose node stopped or failed over moves to one that still answers.
        """
        if isinstance(self.client, Redis):
            return [self.client]
        # Re-read the map from any node it knows (the seed may be the one that
        # stopped); if none answers, try them all anyway: one may be back.
        with contextlib.suppress(*REDIS_FAILURES):
            await self.run(self.client.nodes_manager.initialize())
        known = [(node.host, int(node.port)) for node in self.client.get_nodes()]
        return [self._node(*address) for address in dict.fromkeys([self.seed, *known])]

    def _node(self, host: str, port: int) -> Redis:
        client = self._node_clients.get((host, port))
        if client is None:
            assert self.node_client is not None  # set by subscriber() in cluster mode
            client = self._node_clients[(host, port)] = self.node_client(host, port)
        return client

    def where(self, client: Redis | None = None) -> str:
        """host:port (or the socket) ``client`` talks to, else the connection's target."""
        if client is None or self.node_client is None:
            return self.target
        kwargs = client.connection_pool.connection_kwargs  # a Cluster node's own client
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

    def failure(self, exc: BaseException, client: Redis | None = None) -> str:
        """``exc`` for a log line: where, what, and the setting to check; no credentials."""
        return f"{self.where(client)}: {_what(exc)}; {advice(exc, self.settings)}"

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            for client in (*self.sentinel_clients, *self._node_clients.values()):
                await client.aclose()


def _what(exc: BaseException) -> str:
    # redis-py's messages name the address and Redis' own words ("WRONGPASS
    # invalid username-password pair"), never the password; one line, short.
    text = str(exc).strip().splitlines()[0][:200].rstrip(".") if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def advice(exc: BaseException, settings: str = "cache.redis_url") -> str:
    """What an operator should check for a Redis failure; ``settings``: where Redis is."""
    text = str(exc)
    if isinstance(exc, AuthenticationError) or text.startswith(("NOAUTH", "WRONGPASS")):
        return "check cache.redis_password_file (or the password in cache.redis_url)"
    if isinstance(exc, NoPermissionError):
        return ("check the ACL of the Redis user of cache.redis_url: it needs the cache's "
                "keys and commands, and the purge channel")
    if isinstance(exc, OutOfMemoryError):
        return "check Redis' maxmemory and maxmemory-policy"
    if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError) or "SSL" in text:
        return "check cache.redis_ca_file and the rediss:// scheme of cache.redis_url"
    return (f"check {settings} and that Redis answers there (in Kubernetes, also the "
            "NetworkPolicy avatarproxy-to-redis)")


def _target(cache: RedisSettings) -> tuple[str, str]:
    """Where Redis is and the settings saying so, for log lines: never credentials."""
    if cache.redis_mode == "sentinel":
        return (f"master {cache.redis_sentinel_master!r} of the Sentinels "
                f"{', '.join(cache.redis_sentinels)}",
                "cache.redis_sentinels and cache.redis_sentinel_master")
    options = parse_url(cache.redis_url or "redis://")
    if "path" in options:
        return str(options["path"]), "cache.redis_url"
    host = str(options.get("host", "localhost"))
    return f"{f'[{host}]' if ':' in host else host}:{options.get('port', 6379)}", "cache.redis_url"


def enabled(cache: RedisSettings) -> bool:
    return bool(cache.redis_url) or cache.redis_mode == "sentinel"


def check(cache: RedisSettings) -> list[str]:
    """Problems with the Redis settings, one line each, naming the key."""
    if not enabled(cache):
        return []
    problems: list[str] = []
    scheme = cache.redis_url.partition("://")[0].lower() if cache.redis_url else "redis"
    if scheme not in ("redis", "rediss", "unix"):
        # The URL may hold a password: name only its scheme.
        problems.append(f"cache.redis_url: must start with redis://, rediss:// or unix://, "
                        f"got {scheme or 'no scheme'}")
    elif cache.redis_url and (problem := _url_problem(cache.redis_url)):
        problems.append(problem)
    if cache.redis_mode == "cluster":  # an empty URL is config.py's to report
        if scheme == "unix":
            problems.append("cache.redis_url: cluster mode needs redis:// or rediss://host:port "
                            "of any one node")
        elif urlsplit(cache.redis_url).path.strip("/") not in ("", "0"):
            problems.append("cache.redis_url: a Redis Cluster has only database 0")
    if cache.redis_mode == "sentinel":
        if scheme == "unix":
            problems.append("cache.redis_url: sentinel mode takes redis:// or rediss://")
        if not cache.redis_sentinels:
            problems.append("cache.redis_sentinels: sentinel mode needs at least one host:port")
        problems += [f"cache.redis_sentinels: expected host:port, got {entry!r}"
                     for entry in cache.redis_sentinels if _host_port(entry) is None]
        if not cache.redis_sentinel_master:
            problems.append("cache.redis_sentinel_master: required in sentinel mode")
    for key in ("redis_password_file", "redis_ca_file", "redis_sentinel_password_file"):
        if problem := file_problem(f"cache.{key}", getattr(cache, key)):
            problems.append(problem)
    return problems


def _url_problem(url: str) -> str | None:
    """A URL redis-py would choke on when the first connection opens (an extra
    ``:port``, a port out of range, a bad ``?db=``), or a database that is no number."""
    try:
        parts = urlsplit(url)
        _ = parts.port
        parse_url(url)
    except ValueError:
        # Never urllib's or redis-py's text: a password with an unencoded "/", "#" or
        # "?" (Azure's keys have "/") ends the host part early and lands in it.
        return ("cache.redis_url: not a valid URL (host:port/db, port a number 1-65535): "
                "percent-encode a password's reserved characters, or use "
                "cache.redis_password_file")
    if parts.query:
        # redis-py would take ?decode_responses=, ?protocol=, ?ssl_cert_reqs= ... over
        # the settings the service relies on (decoded bytes break every image).
        keys = sorted({k.partition("=")[0] for k in parts.query.split("&")} - {"db"})
        if keys:
            return (f"cache.redis_url: no query options but ?db=, got {', '.join(keys)}: use "
                    "the cache.redis_* settings")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        return f"cache.redis_url: the database after the host must be a number, got {database!r}"
    return None


def where(cache: RedisSettings) -> str:
    """Where Redis is, for the start-up line: no user, no password."""
    return _target(cache)[0]


def connect(cache: RedisSettings) -> RedisConnection:
    """The client for ``cache``'s mode (no I/O yet: connections open on first use)."""
    return _connect(cache, pubsub=False)


def subscriber(cache: RedisSettings) -> RedisConnection:
    """Clients for Pub/Sub (the purge channel), with the same TLS and credentials.

    Sentinel: the current master, found again after a failover. Cluster: plain
    clients to single nodes (``RedisConnection.pubsub_clients``), any of which
    will do since a PUBLISH reaches the subscribers of every node; the cluster
    client beside them only reads the slot map, and publishes.
    """
    if cache.redis_mode != "cluster":
        return _connect(cache, pubsub=True)
    options = _pubsub_options(cache)

    def node_client(host: str, port: int) -> Redis:
        return commands.Subscriber.from_pool(
            ConnectionPool(**{**options, "host": host, "port": port}))

    return replace(_connect(cache, pubsub=False), node_client=node_client,
                   seed=(options["host"], options["port"]))


def _pubsub_options(cache: RedisSettings) -> dict[str, Any]:
    """A Pub/Sub connection to one server: the service's TLS and credentials."""
    options = _url_options(cache.redis_url or "redis://", cache)
    options.update(_tls_options(cache, options.get("connection_class") is SSLConnection))
    options["connection_class"] = commands.own_budget(options.get("connection_class", Connection))
    return options


def _connect(cache: RedisSettings, pubsub: bool) -> RedisConnection:
    target, settings = _target(cache)
    named = functools.partial(RedisConnection, target=target, settings=settings,
                              timeout=cache.redis_timeout_seconds)
    if pubsub and cache.redis_mode != "sentinel":
        return named(commands.Subscriber.from_pool(ConnectionPool(**_pubsub_options(cache))))
    options = _url_options(cache.redis_url or "redis://", cache)
    tls = options.get("connection_class") is SSLConnection
    if cache.redis_mode == "cluster":
        options.pop("connection_class", None)
        client = RedisCluster(
            **options, ssl=tls, **_tls_options(cache, tls),
            # Serve the slots that still have a master while one fails over.
            require_full_coverage=False,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), 2))
        commands.own_budget_nodes(client, tls)
        return named(client)
    # A quick retry of a broken connection; not of a master no Sentinel named: asking
    # them all again at once would cost as long again for the same answer.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,),
                  is_retryable=lambda error: not isinstance(error, MasterNotFoundError))
    if cache.redis_mode == "sentinel":
        for name in ("host", "port", "path", "connection_class"):
            options.pop(name, None)
        sentinel_options: dict[str, Any] = {
            "socket_timeout": cache.redis_timeout_seconds,
            "socket_connect_timeout": cache.redis_timeout_seconds, "driver_info": None,
            "ssl": tls, **_tls_options(cache, tls)}
        if cache.redis_sentinel_password_file:
            sentinel_options["credential_provider"] = _PasswordFile(
                None, cache.redis_sentinel_password_file)
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed in newer redis-py
            [address for entry in cache.redis_sentinels if (address := _host_port(entry))],
            sentinel_kwargs=sentinel_options, **options, retry=retry, ssl=tls,
            **_tls_options(cache, tls))
        master: Redis = sentinel.master_for(cache.redis_sentinel_master,
                                            redis_class=commands.Subscriber if pubsub else Redis,
                                            connection_class=commands.own_budget(
                                                SentinelManagedSSLConnection if tls
                                                else SentinelManagedConnection))
        return named(master, tuple(sentinel.sentinels))
    options.update(_tls_options(cache, tls))
    options["connection_class"] = commands.own_budget(options.get("connection_class", Connection))
    return named(Redis.from_pool(ConnectionPool(
        **options, retry=retry, max_connections=MAX_CONNECTIONS)))


def _url_options(url: str, cache: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = dict(parse_url(url))
    username = options.pop("username", None)
    if cache.redis_password_file:
        # The file wins over a password in the URL; the user name stays.
        options.pop("password", None)
        options["credential_provider"] = _PasswordFile(username, cache.redis_password_file)
    elif username:
        options["username"] = username
    if cache.redis_mode == "cluster":
        options.pop("db", None)
    # No read timeout: ``RedisConnection.run`` bounds each command; subscriptions idle.
    # Opening a connection: each step within the timeout, and no CLIENT SETINFO (two
    # replies more to read, for a name in CLIENT LIST; the Sentinels' too).
    options.update(socket_timeout=None,
                   socket_connect_timeout=cache.redis_timeout_seconds,
                   health_check_interval=_HEALTH_CHECK_SECONDS, driver_info=None)
    return options


def _tls_options(cache: RedisSettings, tls: bool) -> dict[str, Any]:
    return {"ssl_ca_certs": cache.redis_ca_file} if tls and cache.redis_ca_file else {}


def _host_port(entry: str) -> tuple[str, int] | None:
    host, _, port = entry.strip().rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class _PasswordFile(CredentialProvider):
    """Reads the password on each new connection: a rotated secret needs no restart."""

    def __init__(self, username: str | None, path: str) -> None:
        self._username = username
        self._path = Path(path)

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self._path.read_text(encoding="utf-8").rstrip("\r\n")
        return (self._username, password) if self._username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()
