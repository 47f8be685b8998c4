"""The options of the link to Redis, declared once here (see ``options``).

They sit in the ``[cache]`` section with the avatar tiers' own options
(``cache.CacheSettings``): an operator configures "the cache"; the code keeps
the connection apart from what is cached over it.
"""

from __future__ import annotations

from ..options import option, settings


@settings("cache")
class RedisSettings:
    """The ``[cache]`` options of the connection to Redis (the avatar tiers' own are
    ``cache.CacheSettings``)."""

    redis_url: str = option(
        "",
        "Shared Redis: redis://, rediss:// (TLS) or unix://, user:password@ allowed; "
        "cluster mode: any one node; sentinel mode: scheme, user and db only (host "
        "ignored). Empty (standalone): in-process memory only.",
        secret=True)  # it may hold a password: never shown in a repr
    redis_timeout_seconds: float = option(
        0.5,
        "Timeout of one Redis command; a slow Redis counts as a miss.", minimum=0.01)
    redis_mode: str = option(
        "standalone",
        "How redis_url is reached: one server, a Sentinel-managed master, or a Cluster.",
        choices=("standalone", "sentinel", "cluster"))
    redis_password_file: str = option(
        "",
        "File holding the Redis password (re-read on each new connection); the user name "
        "stays in redis_url.")
    redis_ca_file: str = option(
        "",
        "CA bundle to trust for rediss:// (private PKI); empty: system trust.")
    redis_sentinels: tuple[str, ...] = option((), "Sentinel mode: the Sentinels, as host:port.")
    redis_sentinel_master: str = option(
        "mymaster",
        "Sentinel mode: the name the Sentinels monitor the master under.")
    redis_sentinel_password_file: str = option(
        "",
        "Sentinel mode: file holding the Sentinels' own password, if they require one.")
    key_prefix: str = option(
        "avatarproxy:",
        "Prefix of every Redis key, so deployments can share one Redis.")
    redis_retry_seconds: float = option(
        1.0,
        "After a Redis failure, how long to skip Redis before trying it again.", minimum=0.01)
    purge_ping_seconds: float = option(
        30.0,
        "Purge subscription: PING it after this long without traffic, and subscribe again "
        "if no PONG comes within as long again (a NAT may drop idle flows silently).", minimum=0.1)
