"""``GraphClient``: every Graph call goes through here, in one shared aiohttp session.

One logical call passes the gate (``throttle``: shared pauses and the circuit
breaker), takes one of ``graph.max_concurrency`` slots, gets a token (a 401
refreshes it once), never follows a redirect, reads the body up to a cap and
is retried while the wait is short. Answers become our values or exceptions
(``replies``, ``resources``); paths come from the one URL builder (``urls``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from .. import metrics
from ..errors import GraphNotFound, GraphPermissionDenied, GraphUnavailable
from ..models import NOBODY, Identity, PhotoMeta, Profile, Subject
from .auth import TokenProvider
from .replies import Reply, check, json_object, read_capped
from .resources import identity_from_json, meta_from_json, profile_from_json
from .settings import GraphSettings
from .throttle import GraphGate
from .urls import graph_url, mail_lookup_query, subject_path

MAX_PHOTO_BYTES = 16 * 1024 * 1024  # Graph photos are at most a few MB
MAX_JSON_BYTES = 256 * 1024
_PROFILE_FIELDS = "id,displayName,givenName,surname"
# Kinds with one photo, the largest: no /photos/{size} (for contacts Graph answers
# "Unsupported segment type", microsoft-graph-docs #4153).
_ONE_PHOTO = ("team", "contact")


class Pacer(Protocol):
    """Paces outgoing requests (``avatarproxy warm``'s rate cap) and learns of throttling."""

    async def wait(self, cost: int) -> None: ...
    def throttled(self, retry_after: float | None) -> None: ...


# What urllib's getproxies() (and so aiohttp) reads; NETRC may hold the proxy's password.
_PROXY_VARIABLES = (*(f"{scheme}_proxy" for scheme in ("http", "https", "no")),
                    *(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "NO")),
                    "REQUEST_METHOD", "NETRC")


class EnvProxy:
    """The proxy for Graph from ``HTTPS_PROXY`` / ``NO_PROXY``, as aiohttp's ``trust_env``.

    ``trust_env`` would look both up in threads on every request (two
    thread-pool hops and ~0.2 ms of parsing per Graph call, most of the
    client's time on a miss); they are looked up again here only when one of
    the variables changes.
    """

    def __init__(self, url: URL) -> None:
        self._url = url
        self._seen: tuple[str | None, ...] | None = None
        self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = (None, None)

    def __call__(self) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        seen = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
        if seen != self._seen:
            self._seen = seen
            try:
                self._proxy = get_env_proxy_for_url(self._url)
            except LookupError:  # no proxy, or NO_PROXY names the host
                self._proxy = (None, None)
        return self._proxy


class GraphClient:
    """A thin, typed client over one shared ``aiohttp.ClientSession``."""

    def __init__(self, settings: GraphSettings, tokens: TokenProvider,
                 session: aiohttp.ClientSession, gate: GraphGate | None = None,
                 pacer: Pacer | None = None) -> None:
        self._base = settings.base_url
        self._tokens = tokens
        self._session = session
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self.gate = gate or GraphGate(settings)
        self._retries = settings.max_retries
        self._max_wait = settings.retry_max_wait_seconds
        self._pacer = pacer
        self._proxy = EnvProxy(URL(self._base))
        self.in_flight = 0  # requests holding one of the max_concurrency slots

    @property
    def base_url(self) -> str:
        return self._base

    async def photo_meta(self, subject: Subject) -> PhotoMeta:
        """Metadata of the largest photo; ``has_photo`` False for 404 or the 1x1 answer."""
        operation = f"{subject.kind} metadata" if subject.kind in _ONE_PHOTO else "metadata"
        try:
            reply = await self._get(operation, subject, subject_path(subject) + "/photo",
                                    MAX_JSON_BYTES)
        except GraphNotFound:
            return PhotoMeta(has_photo=False, fetched_at=time.time())
        return meta_from_json(json_object(reply))

    async def profile(self, subject: Subject, *, upn: bool = False) -> Profile | None:
        """Names for initials (and with ``upn`` the user's UPN); None when the subject
        does not exist."""
        # Groups and teams have a displayName only; contacts the names users have.
        fields = _PROFILE_FIELDS if subject.kind in ("user", "contact") else "id,displayName"
        if upn and subject.kind == "user":
            fields += ",userPrincipalName"
        try:
            reply = await self._get(subject.kind, subject, subject_path(subject), MAX_JSON_BYTES,
                                    query="$select=" + fields)
        except GraphNotFound:
            return None
        return profile_from_json(json_object(reply), upn=upn and subject.kind == "user")

    async def photo_bytes(self, subject: Subject, hd_size: int | None) -> bytes:
        """Bytes of one HD size (``/photos/NxN/$value``) or of the largest (``/photo/$value``)."""
        operation = "photo"
        if subject.kind in _ONE_PHOTO:
            # Teams and contacts expose only their largest photo: callers downscale it.
            operation, hd_size = f"{subject.kind} photo", None
        suffix = f"/photos/{hd_size}x{hd_size}/$value" if hd_size else "/photo/$value"
        reply = await self._get(operation, subject, subject_path(subject) + suffix,
                                MAX_PHOTO_BYTES)
        return reply.body

    async def find_user_by_mail(self, address: str) -> Identity:
        """The one user with this mail or proxy address (id and UPN), else ``NOBODY``."""
        data = await self.get_json("lookup", Subject(address), "/users",
                                   mail_lookup_query(address))
        found = [identity_from_json(v) for v in data.get("value", []) if isinstance(v, dict)]
        return found[0] if len(found) == 1 else NOBODY

    async def get_json(self, operation: str, subject: Subject, path: str,
                       query: str = "", limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
        """A JSON GET for other Graph helpers (listings, lookups); ``path`` already encoded.
        ``limit``: the largest answer read (pages of many users need more)."""
        return json_object(await self._get(operation, subject, path, limit, query=query))

    async def post_json(self, operation: str, path: str, payload: Any,
                        cost: int = 1) -> dict[str, Any]:
        """A JSON POST (``$batch``); ``cost`` is how many requests Graph will count."""
        return json_object(await self._get(operation, Subject(path), path,
                                           4 * MAX_JSON_BYTES, payload=payload, cost=cost))

    async def _get(self, operation: str, subject: Subject, path: str, limit: int,
                   query: str = "", payload: Any = None, cost: int = 1) -> Reply:
        """One logical call: paused or breaker-stopped calls fail fast; throttled
        or failed ones are retried while the wait is short (the browser waits)."""
        url = graph_url(self._base, path, query)
        # Graph's limits are a mailbox's: a contact's is the mailbox holding it.
        mailbox = subject.mailbox or subject.key
        attempt = 0
        while True:
            await self.gate.admit(mailbox)
            if self._pacer is not None:
                await self._pacer.wait(cost)
            try:
                reply = check(operation, await self._authorized_send(operation, url, limit,
                                                                     payload))
            except GraphUnavailable as exc:
                if self._pacer is not None:
                    self._pacer.throttled(exc.retry_after)
                wait = await self.gate.failed(mailbox, exc, attempt)
                if attempt >= self._retries or wait > self._max_wait:
                    raise
                attempt += 1
                if exc.retry_after is not None:
                    metrics.retry_after_honoured(wait)
                await asyncio.sleep(wait)
                continue
            except (GraphNotFound, GraphPermissionDenied):
                self.gate.succeeded()  # Graph answered: it is up
                raise
            self.gate.succeeded()
            return reply

    async def _authorized_send(self, operation: str, url: URL, limit: int,
                               payload: Any = None) -> Reply:
        async with self._slots:
            self.in_flight += 1
            try:
                token = await self._tokens.token()
                reply = await self._send(operation, url, token, limit, payload)
                if reply.status == 401:
                    # An expired or revoked token: refresh once, then give up.
                    reply = await self._send(operation, url,
                                             await self._tokens.token(refresh=True,
                                                                      refused=token),
                                             limit, payload)
            finally:
                self.in_flight -= 1
        return reply

    async def _send(self, operation: str, url: URL, token: str, limit: int,
                    payload: Any = None) -> Reply:
        headers = {"Authorization": f"Bearer {token}", "Accept": "*/*"}
        method = "GET" if payload is None else "POST"
        proxy, proxy_auth = self._proxy()
        start, status = time.perf_counter(), None
        try:
            async with self._session.request(method, url, headers=headers, json=payload,
                                             allow_redirects=False, proxy=proxy,
                                             proxy_auth=proxy_auth) as resp:
                status = resp.status
                body, oversize = await read_capped(resp, limit)
                return Reply(resp.status, resp.headers, body, oversize)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphUnavailable(f"Graph unreachable: {type(exc).__name__}") from exc
        finally:
            metrics.graph_request(operation, status, metrics.since(start))
