"""Microsoft Graph calls for user, group and team photos and names.

Owns the one URL builder that turns a subject into a Graph path, and turns
Graph's answers and network failures into our exceptions
(``GraphNotFound``, ``GraphPermissionDenied``, ``GraphUnavailable``).
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from . import metrics
from .auth import TokenProvider
from .config import GraphSettings
from .errors import (
    AuthError,
    GraphError,
    GraphNotFound,
    GraphPermissionDenied,
    GraphUnavailable,
    InvalidImage,
)
from .models import NOBODY, Identity, PhotoMeta, Profile, Subject
from .sizing import is_placeholder, parse_size_id
from .throttle import GraphGate

log = logging.getLogger(__name__)

MAX_PHOTO_BYTES = 16 * 1024 * 1024  # Graph photos are at most a few MB
MAX_JSON_BYTES = 256 * 1024
# Longest pause a Retry-After may impose (it is shared by every replica through Redis).
MAX_RETRY_AFTER = 300.0
_PROFILE_FIELDS = "id,displayName,givenName,surname"
# What a 403 on each operation means the app registration is missing.
PERMISSIONS = {"metadata": "ProfilePhoto.Read.All", "photo": "ProfilePhoto.Read.All",
               "user": "User.ReadBasic.All",
               "group": "Group.Read.All or GroupMember.Read.All",
               "team": "Team.ReadBasic.All", "team metadata": "Team.ReadBasic.All",
               "team photo": "Team.ReadBasic.All", "batch": "ProfilePhoto.Read.All",
               "list": "User.ReadBasic.All", "list enabled": "User.Read.All",
               "lookup": "User.ReadBasic.All"}


THROTTLED = (429, 503, 504)
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")


class Pacer(Protocol):
    """Paces outgoing requests (``avatarproxy warm``'s rate cap) and learns of throttling."""

    async def wait(self, cost: int) -> None: ...
    def throttled(self, retry_after: float | None) -> None: ...


def user_path(subject: Subject) -> str:
    """The encoded Graph path of a user: the only place user input becomes a path.

    Every character that could end the segment (``/``, ``?``, ``#``, ``%``)
    is percent-encoded: a guest's ``#EXT#`` would otherwise be cut off as a
    fragment. A UPN starting with ``$`` must use the OData key form
    ``/users('$name@contoso.com')`` (Graph reads ``/users/$x`` as a system
    query option), and inside that form a ``'`` is doubled.
    """
    key = subject.key
    if key.startswith("$"):
        return "/users('" + quote(key.replace("'", "''"), safe="@$") + "')"
    if not key.strip("."):
        # "." and ".." are dot-segments: a URL library would climb out of /users.
        return "/users/" + key.replace(".", "%2E")
    return "/users/" + quote(key, safe="@")


def group_path(subject: Subject) -> str:
    """``/groups/{id}``; ids are validated GUIDs, encoded anyway (defence in depth)."""
    return "/groups/" + quote(subject.key, safe="")


def team_path(subject: Subject) -> str:
    return "/teams/" + quote(subject.key, safe="")


def subject_path(subject: Subject) -> str:
    """The Graph path of any subject: users, groups and teams."""
    if subject.kind == "group":
        return group_path(subject)
    if subject.kind == "team":
        return team_path(subject)
    return user_path(subject)


def mail_lookup_query(address: str) -> str:
    """The ``/users`` query finding who has ``address`` as mail or as a proxy address.

    In many tenants ``mail`` differs from the UPN; aliases live in
    ``proxyAddresses`` as ``smtp:alias@domain``. Inside an OData string
    literal a ``'`` is doubled; the whole expression is percent-encoded.
    """
    literal = address.replace("'", "''")
    expression = f"mail eq '{literal}' or proxyAddresses/any(a:a eq 'smtp:{literal}')"
    # The UPN too: the domain and guest rules apply to the person found.
    return "$select=id,userPrincipalName&$filter=" + quote(expression, safe="")


def graph_url(base_url: str, path: str, query: str = "") -> URL:
    """Join base and an already-encoded path; ``encoded=True`` stops re-quoting."""
    text = base_url.rstrip("/") + path + (f"?{query}" if query else "")
    return URL(text, encoded=True)


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


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    oversize: bool = False  # the body went past the limit and was cut


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
        operation = "team metadata" if subject.kind == "team" else "metadata"
        try:
            reply = await self._get(operation, subject, subject_path(subject) + "/photo",
                                    MAX_JSON_BYTES)
        except GraphNotFound:
            return PhotoMeta(has_photo=False, fetched_at=time.time())
        return meta_from_json(_json(reply))

    async def profile(self, subject: Subject, *, upn: bool = False) -> Profile | None:
        """Names for initials (and with ``upn`` the user's UPN); None when the subject
        does not exist."""
        # Groups and teams have a displayName only.
        fields = _PROFILE_FIELDS if subject.kind == "user" else "id,displayName"
        if upn and subject.kind == "user":
            fields += ",userPrincipalName"
        try:
            reply = await self._get(subject.kind, subject, subject_path(subject), MAX_JSON_BYTES,
                                    query="$select=" + fields)
        except GraphNotFound:
            return None
        data = _json(reply)
        profile = profile_from_json(data)
        if upn and subject.kind == "user":
            # "": asked, but Graph named none (whose photo it is cannot be told).
            profile = replace(profile, upn=(_str(data.get("userPrincipalName")) or "").lower())
        return profile

    async def photo_bytes(self, subject: Subject, hd_size: int | None) -> bytes:
        """Bytes of one HD size (``/photos/NxN/$value``) or of the largest (``/photo/$value``)."""
        operation = "photo"
        if subject.kind == "team":
            # Teams expose only their largest photo: callers downscale it.
            operation, hd_size = "team photo", None
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
                       query: str = "") -> dict[str, Any]:
        """A JSON GET for other Graph helpers (listings, lookups); ``path`` already encoded."""
        return _json(await self._get(operation, subject, path, MAX_JSON_BYTES, query=query))

    async def post_json(self, operation: str, path: str, payload: Any,
                        cost: int = 1) -> dict[str, Any]:
        """A JSON POST (``$batch``); ``cost`` is how many requests Graph will count."""
        return _json(await self._get(operation, Subject(path), path, 4 * MAX_JSON_BYTES,
                                     payload=payload, cost=cost))

    async def _get(self, operation: str, subject: Subject, path: str, limit: int,
                   query: str = "", payload: Any = None, cost: int = 1) -> _Reply:
        """One logical call: paused or breaker-stopped calls fail fast; throttled
        or failed ones are retried while the wait is short (the browser waits)."""
        url = graph_url(self._base, path, query)
        attempt = 0
        while True:
            await self.gate.admit(subject.key)
            if self._pacer is not None:
                await self._pacer.wait(cost)
            try:
                reply = _check(operation, await self._authorized_send(operation, url, limit,
                                                                      payload))
            except GraphUnavailable as exc:
                if self._pacer is not None:
                    self._pacer.throttled(exc.retry_after)
                wait = await self.gate.failed(subject.key, exc, attempt)
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
                               payload: Any = None) -> _Reply:
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
                    payload: Any = None) -> _Reply:
        headers = {"Authorization": f"Bearer {token}", "Accept": "*/*"}
        method = "GET" if payload is None else "POST"
        proxy, proxy_auth = self._proxy()
        start, status = time.perf_counter(), None
        try:
            async with self._session.request(method, url, headers=headers, json=payload,
                                             allow_redirects=False, proxy=proxy,
                                             proxy_auth=proxy_auth) as resp:
                status = resp.status
                body, oversize = await _read_capped(resp, limit)
                return _Reply(resp.status, resp.headers, body, oversize)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphUnavailable(f"Graph unreachable: {type(exc).__name__}") from exc
        finally:
            metrics.graph_request(operation, status, metrics.since(start))


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The whole body, or its first ``limit`` bytes and True once it goes past them.

    ``content.read(n)`` returns whatever has arrived so far: a photo in TCP
    segments would be cut after the first. So read to the end, counting the
    (decompressed) bytes; a body that ends before its ``Content-Length`` or
    its last chunk raises ``ClientPayloadError`` (an HTTP/1.0 body delimited by
    the connection's close cannot tell: image verification catches those).
    Past the cap the connection is dropped rather than drained.
    """
    declared = resp.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
        resp.close()
        return b"", True
    body = bytearray()
    async for chunk in resp.content.iter_any():
        if len(body) + len(chunk) > limit:
            body += chunk[: limit - len(body)]
            resp.close()
            return bytes(body), True
        body += chunk
    return bytes(body), False


def meta_from_json(data: Mapping[str, Any]) -> PhotoMeta:
    """A profilePhoto's JSON; the ``1x1`` answer or a missing mediaEtag means no photo."""
    size = parse_size_id(str(data.get("id", ""))) or (0, 0)
    width = _int(data.get("width"), size[0])
    height = _int(data.get("height"), size[1])
    # Our keys and ETags are built from it: nothing but printable ASCII gets through.
    etag = str(data.get("@odata.mediaEtag") or "").encode("ascii", "backslashreplace").decode()
    if is_placeholder(width, height) or not etag:
        return PhotoMeta(has_photo=False, fetched_at=time.time())
    return PhotoMeta(has_photo=True, media_etag=etag, width=width, height=height,
                     fetched_at=time.time())


def identity_from_json(data: Mapping[str, Any]) -> Identity:
    """A user's id, UPN and (when selected) mail and ``smtp:`` aliases; ``NOBODY`` if
    the id is not a GUID or the UPN is missing."""
    object_id, upn = _str(data.get("id")), _str(data.get("userPrincipalName"))
    if object_id is None or upn is None or not _GUID.fullmatch(object_id):
        return NOBODY
    aliases = data.get("proxyAddresses")
    addresses = [_str(data.get("mail")) or "", *(
        a[5:] for a in (aliases if isinstance(aliases, list) else [])
        if isinstance(a, str) and a[:5].lower() == "smtp:")]  # not x500:, sip:...
    return Identity(object_id.lower(), upn.lower(),
                    tuple(dict.fromkeys(a.lower() for a in addresses if a)))


def profile_from_json(data: Mapping[str, Any]) -> Profile:
    return Profile(object_id=_str(data.get("id")), display_name=_str(data.get("displayName")),
                   given_name=_str(data.get("givenName")), surname=_str(data.get("surname")))


def check_reply(operation: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Raise our exception for a non-2xx answer (used for ``$batch`` sub-responses)."""
    _check(operation, _Reply(status, CIMultiDictProxy(CIMultiDict(headers)), body))


def _check(operation: str, reply: _Reply) -> _Reply:
    status = reply.status
    if 200 <= status < 300 and reply.oversize:
        if operation in ("photo", "team photo"):
            raise InvalidImage("photo over the size cap")
        raise GraphUnavailable(f"{operation}: Graph answer over the size cap")
    if 200 <= status < 300:
        return reply
    exc = _failure(operation, reply)
    # Kept out of str(): Graph's message may name the person (log lines must not).
    exc.detail = _error_field(reply, "message", 200)
    raise exc


def _failure(operation: str, reply: _Reply) -> GraphError:
    status = reply.status
    # Graph answers 400 for a key it cannot parse as a user: nobody to show.
    if status in (400, 404):
        return GraphNotFound(f"{operation}: Graph {status} {_error_code(reply)}")
    if status == 403:
        return GraphPermissionDenied(f"{operation}: Graph 403 {_error_code(reply)}",
                                     PERMISSIONS[operation])
    if status == 401:
        return AuthError(f"{operation}: Graph rejected a fresh token: {_error_code(reply)}")
    retry_after = _retry_after(reply.headers.get("Retry-After"), reply.headers.get("Date"))
    return GraphUnavailable(f"{operation}: Graph {status} {_error_code(reply)}", retry_after,
                            reply.headers.get("x-ms-throttle-scope"))


def _error_code(reply: _Reply) -> str:
    return _error_field(reply, "code", 80)


def _error_field(reply: _Reply, name: str, limit: int) -> str:
    try:
        error = json.loads(reply.body)["error"]
        return str(error.get(name, ""))[:limit]
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def _retry_after(value: str | None, date: str | None = None) -> float | None:
    """Seconds to wait, at most ``MAX_RETRY_AFTER``; None when there is nothing usable.

    Graph sends a number (``2.128``); HTTP also allows a date, read against the
    answer's own ``Date`` so our clock's skew does not matter. Zero, a date in the
    past or garbage is None: plain backoff, and the failure counts for the breaker.
    A pause is shared by every replica, so an absurd value must not stop Graph calls
    for long: it is capped.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, date)
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _seconds_until(value: str, date: str | None) -> float:
    """``value`` (an HTTP date) minus ``date`` (the answer's, else now); NaN if unreadable."""
    try:
        when = _timestamp(value)
        now = _timestamp(date) if date else time.time()
    except (TypeError, ValueError, OverflowError, IndexError):
        return math.nan
    return when - now


def _timestamp(http_date: str) -> float:
    when = email.utils.parsedate_to_datetime(http_date)
    if when.tzinfo is None:  # "-0000" or no zone: HTTP dates are in GMT
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _json(reply: _Reply) -> dict[str, Any]:
    try:
        data = json.loads(reply.body)
    except ValueError as exc:
        raise GraphUnavailable("Graph sent invalid JSON") from exc
    if not isinstance(data, dict):
        raise GraphUnavailable("Graph sent unexpected JSON")
    return data


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["GraphClient", "GraphError", "graph_url", "group_path", "identity_from_json",
           "mail_lookup_query", "subject_path", "team_path", "user_path"]
