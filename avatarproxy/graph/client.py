"""``GraphClient``: every Graph call goes through here, in one shared aiohttp session.

One logical call that Exchange answers first waits for one of its mailbox's
four slots (``mailboxes``); then it passes the gate (``throttle``: shared
pauses and the circuit breaker), takes one of ``graph.max_concurrency`` slots,
gets a token (a 401 refreshes it once), never follows a redirect, reads the
body up to a cap and is retried while the wait is short. Answers become our
values or exceptions (``replies``, ``resources``); paths come from the one URL
builder (``urls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from typing import Any, Protocol

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from .. import metrics
from ..errors import GraphNotFound, GraphPermissionDenied, GraphUnavailable, InvalidImage
from ..models import NOBODY, ONE_PHOTO, Identity, PhotoMeta, Profile, Subject
from .auth import TokenProvider
from .mailboxes import MailboxSlots, Refusals
from .replies import Reply, check, json_object, read_capped
from .resources import contact_meta_from_json, identity_from_json, meta_from_json, profile_from_json
from .settings import GraphSettings
from .throttle import GraphGate
from .urls import graph_url, mail_lookup_query, subject_path

MAX_PHOTO_BYTES = 16 * 1024 * 1024  # Graph photos are at most a few MB
MAX_JSON_BYTES = 256 * 1024
_PROFILE_FIELDS = "id,displayName,givenName,surname"
# Calls Exchange Online answers, each against one mailbox's limits: a photo lives in
# its owner's (a group's in the group's), a contact in the mailbox keeping it. A
# user's or group's names are the directory's (Entra ID): no mailbox slot.
_MAILBOX_CALLS = frozenset(("metadata", "photo", "team metadata", "team photo", "contact",
                            "contact metadata", "contact photo"))


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
        self.mailboxes = MailboxSlots()
        self.refusals = Refusals()  # mailboxes whose contacts Exchange keeps from the app

    @property
    def base_url(self) -> str:
        return self._base

    async def photo_meta(self, subject: Subject) -> PhotoMeta:
        """Metadata of the largest photo; ``has_photo`` False for 404 or the 1x1 answer."""
        operation = f"{subject.kind} metadata" if subject.kind in ONE_PHOTO else "metadata"
        try:
            reply = await self._get(operation, subject, subject_path(subject) + "/photo",
                                    MAX_JSON_BYTES)
        except GraphNotFound:
            return PhotoMeta(has_photo=False, fetched_at=time.time())
        if subject.kind != "contact":
            return meta_from_json(json_object(reply))
        return contact_meta_from_json(json_object(reply)) or await self._meta_of_bytes(subject)

    async def _meta_of_bytes(self, subject: Subject) -> PhotoMeta:
        """A contact's photo metadata that names no version (no mediaEtag) nor the 1x1 "no
        photo": the bytes say whether there is one, and their digest is its version.

        The shape of a contact's answer was never checked against a real tenant
        (docs/contacts.md): an answer without a mediaEtag must not hide a photo.
        It costs a download per metadata refresh; the photo path downloads it once
        more, then keeps it under that version.
        """
        try:
            body = await self.photo_bytes(subject, None)
        except (GraphNotFound, InvalidImage):  # none, or over the cap: initials either way
            body = b""
        if not body:
            return PhotoMeta(has_photo=False, fetched_at=time.time())
        version = "sha256:" + hashlib.sha256(body).hexdigest()[:32]
        return PhotoMeta(has_photo=True, media_etag=version, fetched_at=time.time())

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
        if subject.kind in ONE_PHOTO:
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
        or failed ones are retried while the wait is short (the browser waits),
        outside the mailbox's slot."""
        url = graph_url(self._base, path, query)
        # Graph's limits are a mailbox's: a contact's is the mailbox holding it.
        mailbox = subject.mailbox or subject.key
        contact = subject.kind == "contact"
        if contact:
            self.refusals.check(mailbox)  # refused a moment ago: no call
        attempt = 0
        while True:
            async with (self.mailboxes.hold(mailbox) if operation in _MAILBOX_CALLS
                        else contextlib.nullcontext()):
                await self.gate.admit(mailbox)
                if self._pacer is not None:
                    await self._pacer.wait(cost)
                try:
                    return await self._checked(operation, url, limit, payload,
                                               mailbox if contact else None)
                except GraphUnavailable as exc:
                    failure = exc
            if self._pacer is not None:
                self._pacer.throttled(failure.retry_after)
            # A contact's 429 is its mailbox's limit (four at once, and many contacts
            # per page): never evidence that the whole app is throttled.
            wait = await self.gate.failed(mailbox, failure, attempt, mailbox_only=contact)
            if attempt >= self._retries or wait > self._max_wait:
                raise failure
            attempt += 1
            if failure.retry_after is not None:
                metrics.retry_after_honoured(wait)
            await asyncio.sleep(wait)

    async def _checked(self, operation: str, url: URL, limit: int, payload: Any,
                       refusable: str | None) -> Reply:
        """One request's usable answer, else our exception; a 403 for ``refusable`` (a
        contact's mailbox) is remembered (``Refusals``)."""
        try:
            reply = check(operation, await self._authorized_send(operation, url, limit,
                                                                 payload))
        except GraphPermissionDenied as exc:
            self.gate.succeeded()  # Graph answered: it is up
            if refusable is not None:
                self.refusals.remember(refusable, exc)
            raise
        except GraphNotFound:
            self.gate.succeeded()
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
