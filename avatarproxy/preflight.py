"""What ``serve`` checks once, in the main process, before any worker starts.

The start-up policy (docs/operations.md, "Start-up policy"): a **misconfiguration**
(a file that is missing or unreadable, a URL that cannot work, a credential or
tenant the identity provider refuses, a Redis password Redis refuses) stops
start-up with one line naming the key, exit status 2, before any worker
exists. A **dependency outage** (the authority or Redis unreachable, failing or
stalled) starts the service degraded: a warning says so, cached avatars and
initials are served, and the dependency is asked again as requests come;
``/readyz`` stays ready, since initials can always be served.

``doctor`` runs the same checks and says which of the two each failure is.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from redis.exceptions import AuthenticationError, NoPermissionError, OutOfMemoryError, ResponseError

from .config import Settings
from .errors import AuthError
from .graph.auth import fetch_token, scope_for
from .graph.authproblems import as_problem
from .options import file_problem
from .redis import connection
from .redis.settings import RedisSettings
from .server import ServerSettings

# How long the start-up check may wait for Redis in all (a Cluster tries each node).
_REDIS_CHECK_SECONDS = 5.0
_REDIS_PROBE_FAILURES: tuple[type[Exception], ...] = (*connection.REDIS_FAILURES, ValueError)


def file_problems(settings: Settings) -> list[str]:
    """Every configured file outside ``cache`` (redis.connection checks those) exists and is
    readable; CA bundles hold certificates; a client certificate file holds a
    certificate and its private key."""
    auth, graph = settings.auth, settings.graph
    problems: list[str] = []
    for key, path in (("auth.client_secret_file", auth.client_secret_file),
                      ("auth.federated_token_file", auth.federated_token_file),
                      ("auth.certificate_path", auth.certificate_path),
                      ("auth.ca_file", auth.ca_file), ("graph.ca_file", graph.ca_file)):
        problem = file_problem(key, path)
        if problem is None and path:
            problem = _content_problem(key, path)
        if problem is not None:
            problems.append(problem)
    return problems


def _content_problem(key: str, path: str) -> str | None:
    if key.endswith("ca_file"):
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, ValueError):
            return f"{key}: no PEM certificate in {path}"
    if key == "auth.certificate_path":
        pem = Path(path).read_bytes()
        try:
            x509.load_pem_x509_certificate(pem)
        except ValueError:
            return f"{key}: no PEM certificate in {path} (it holds the certificate and its key)"
        try:
            serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            return (f"{key}: no unencrypted PEM private key in {path} (it holds the certificate "
                    "and its key)")
    return None


def listen_problems(server: ServerSettings) -> list[str]:
    """Whether ``server.port`` (and ``server.metrics_port``) can be listened on: checked
    here once, as every worker would otherwise fail with a traceback of its own."""
    problems = []
    for key, port in (("server.port", server.port), ("server.metrics_port", server.metrics_port)):
        if port and (problem := _listen_problem(key, server.host, port)):
            problems.append(problem)
    return problems


def _listen_problem(key: str, host: str, port: int) -> str | None:
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"server.host: cannot listen on {host!r}: {exc.strerror}"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as sock:
            # As aiohttp does: a previous run's TIME_WAIT connections do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return f"{key}: cannot listen on {host}:{port}: {exc.strerror}"
    return None


def warnings(settings: Settings) -> list[str]:
    """Settings that work but probably do not do what was meant."""
    auth = settings.auth
    tenant = urlsplit(auth.authority).path.strip("/").split("/")[0] if auth.authority else ""
    if auth.tenant_id and tenant and tenant.lower() != auth.tenant_id.lower():
        # msal asks the authority; the tenant id alone is never sent anywhere.
        return [f"auth.tenant_id: {auth.tenant_id!r} is not the tenant of auth.authority "
                f"({tenant!r}); auth.authority is used and auth.tenant_id ignored"]
    return []


@dataclass
class Report:
    """``problems`` stop start-up; ``degraded`` are outages it starts through."""

    problems: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)


async def probe(settings: Settings) -> Report:
    """A token from the authority and a PING to Redis, at once."""
    report = Report()
    await asyncio.gather(_probe_token(settings, report), _probe_redis(settings, report))
    return report


async def _probe_token(settings: Settings, report: Report) -> None:
    try:
        await fetch_token(settings.auth, scope_for(settings.graph.base_url))
    except AuthError as exc:
        if exc.misconfigured:
            report.problems.append(as_problem(exc))
        else:
            report.degraded.append(f"no token: {as_problem(exc)}; cached avatars and initials "
                                   "are served, photos again once the authority answers")


async def _probe_redis(settings: Settings, report: Report) -> None:
    if not connection.enabled(settings.redis):
        return
    redis = connection.connect(settings.redis)
    try:
        async with asyncio.timeout(_REDIS_CHECK_SECONDS):
            await redis.run(redis.client.ping())
    except _REDIS_PROBE_FAILURES as exc:
        problem = explain_redis(settings.redis, exc)
        if problem.misconfigured:
            report.problems.append(str(problem))
        else:
            report.degraded.append(f"Redis: {problem}; each process serves from its memory "
                                   "tier and uses Redis once it answers")
    finally:
        await redis.aclose()


@dataclass(frozen=True, slots=True)
class RedisProblem:
    """Why Redis would not answer: the key to look at, and whether it is a
    misconfiguration (``serve`` refuses to start) or an outage (it starts on its
    memory tier and uses Redis once it answers)."""

    key: str
    message: str
    misconfigured: bool

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def explain_redis(cache: RedisSettings, exc: BaseException) -> RedisProblem:
    """What a failed command (``serve``'s PING, ``doctor``'s, ``purge``'s) means."""
    text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    advice = connection.advice(exc)
    if isinstance(exc, AuthenticationError):  # WRONGPASS, NOAUTH, a disabled user
        key = "cache.redis_password_file" if cache.redis_password_file else "cache.redis_url"
        return RedisProblem(key, f"authentication failed ({text}): {advice}", True)
    if isinstance(exc, NoPermissionError):
        return RedisProblem("cache.redis_url", f"permission denied ({text}): {advice}", True)
    if isinstance(exc, ResponseError) and not isinstance(exc, OutOfMemoryError):
        return RedisProblem("cache.redis_url", f"Redis refused it ({text})", True)  # a db, say
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return RedisProblem("cache.redis_ca_file", f"the server's certificate is not trusted "
                            f"({text}): {advice}", True)
    return RedisProblem("cache.redis_url", f"unreachable: {type(exc).__name__}: {text}; "
                        f"{advice}", False)


def summary(settings: Settings, workers: int) -> str:
    """The one start-up line: what this process will talk to, without secrets."""
    authority = urlsplit(settings.auth.authority)
    memory = settings.cache.memory_max_bytes / (1024 * 1024)
    cache = settings.redis
    redis = "none (memory tier only)"
    if connection.enabled(cache):
        tls = " over TLS" if urlsplit(cache.redis_url).scheme == "rediss" else ""
        mode = {"cluster": "cluster via ", "sentinel": ""}.get(cache.redis_mode, "")
        redis = f"{mode}{connection.where(cache)}{tls}"
    return (f"start-up: Graph {settings.graph.base_url}, authority {authority.netloc}"
            f"{authority.path.rstrip('/')}, Redis {redis}, memory "
            f"tier {memory:g} MiB per worker, {workers} worker{'s' if workers != 1 else ''}, "
            f"listening on {settings.server.host}:{settings.server.port}")
