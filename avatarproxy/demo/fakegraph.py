"""A fake of Microsoft Graph's user photo API, served in-process.

Tests point avatarproxy at it to see exactly what it sends (``requests`` keeps
every raw path and Authorization header) and to make Graph misbehave
(``inject`` an error status, ``fault`` for dropped connections, slow
answers and bad photo bytes, ``latency``); ``avatarproxy demo`` serves it with
``demo_people()`` as a tenant. It answers as the profilePhoto reference pages
describe, quirks included: ids spelled ``240X240`` or ``240x240``, the ``1x1``
answer for a size that is absent, and the OData key form ``/users('...')``.
It deliberately shares no code with the client it exercises.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from aiohttp import web
from PIL import Image, ImageDraw

HD_SIZES = (48, 64, 96, 120, 240, 360, 432, 504, 648)
_VERSIONS = frozenset({"v1.0", "beta"})
_SIZE_ID = re.compile(r"^([1-9][0-9]{0,4})[xX]([1-9][0-9]{0,4})$")
_KEY_FORM = re.compile(r"^users\((.*)\)$", re.DOTALL)
_USER_FIELDS = ("id", "displayName", "givenName", "surname", "userPrincipalName")
_ODATA_JSON = ("application/json;odata.metadata=minimal;odata.streaming=true;"
               "IEEE754Compatible=false;charset=utf-8")
# A transparent 1x1 GIF: what ``/photos/{size}/$value`` sends for an absent size.
ONE_PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01"
                 b"\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
_DEFAULT_ERRORS = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("ImageNotFound", "Exception of type 'Microsoft.Fast.Profile.Core.Exception."
                           "ImageNotFoundException' was thrown."),
    429: ("TooManyRequests", "Too many requests."),
    500: ("InternalServerError", "An internal server error occurred."),
    503: ("ServiceNotAvailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The gateway timed out."),
}


def available_sizes(photo: Image.Image | None) -> list[tuple[int, int]]:
    """The sizes Graph offers for a master photo, smallest first.

    A square master of an HD side is an Exchange photo: every HD size up to
    its side. Anything else is an Entra-only photo: only its own dimensions.
    """
    if photo is None:
        return []
    width, height = photo.size
    if width == height and width in HD_SIZES:
        return [(side, side) for side in HD_SIZES if side <= width]
    return [(width, height)]


@dataclass(frozen=True, eq=False)
class RawPhoto:
    """A photo served as exact bytes, as Graph stored them (lies included),
    instead of the fake's own JPEG of ``FakePerson.photo``.

    ``bodies`` holds one body per available size (``(648, 648)``: ``/photos/
    648x648/$value``; the largest is also ``/photo/$value``). ``chunked`` sends
    them with ``Transfer-Encoding: chunked`` in several chunks and no
    ``Content-Length``, as a streaming front end does.
    """

    bodies: Mapping[tuple[int, int], bytes]
    content_type: str = "image/jpeg"
    chunked: bool = False

    def response(self, width: int, height: int) -> web.Response:
        body = self.bodies[(width, height)]
        if not self.chunked:
            return web.Response(body=body, content_type=self.content_type)
        # A body of unknown length: aiohttp sends each piece as its own chunk.
        return web.Response(body=_pieces(body), content_type=self.content_type)


_CHUNK_BYTES = 4096


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), _CHUNK_BYTES):
        yield body[start:start + _CHUNK_BYTES]


@dataclass(eq=False)
class FakePerson:
    """One directory user. ``photo`` is the master image, any dimensions.

    A square master of an HD side is an Exchange photo: every HD size up to
    its side is available. Anything else is an Entra-only photo: only its
    own dimensions exist. ``placeholder`` (no photo) makes the metadata call
    answer the documented ``1x1`` JSON instead of 404. ``capital_x`` spells
    ids ``240X240``: Graph sends both spellings. ``raw`` (instead of ``photo``)
    serves exact bytes at the sizes it lists.
    """

    upn: str
    object_id: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    photo: Image.Image | None = None
    placeholder: bool = False
    media_etag: str = ""
    capital_x: bool = False
    mail: str | None = None
    proxy_addresses: tuple[str, ...] = ()  # "SMTP:primary@x", "smtp:alias@x"
    account_enabled: bool = True
    raw: RawPhoto | None = None

    def __post_init__(self) -> None:
        if (self.photo is not None or self.raw is not None) and not self.media_etag:
            self.media_etag = _etag(self.object_id, 0)

    def size_id(self, width: int, height: int) -> str:
        return f"{width}{'X' if self.capital_x else 'x'}{height}"

    def sizes(self) -> list[tuple[int, int]]:
        """Available sizes, smallest first; empty without a photo."""
        if self.raw is not None:
            return sorted(self.raw.bodies, key=lambda size: size[0] * size[1])
        return available_sizes(self.photo)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    raw_path: str  # as received: percent-encoding and query string intact
    authorization: str | None
    batched: bool = False  # a sub-request of a $batch (no headers of its own)
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def path(self) -> str:
        """Alias of ``raw_path`` (still encoded, query included)."""
        return self.raw_path


# Answers tenants really get (FACTS.md, "Graph's answers as tenants see them"):
# ``inject(status, error=...)`` sends one of these as the error body.
REAL_ERRORS: dict[str, tuple[int, str, str]] = {
    # A user without an Exchange Online mailbox (microsoft-graph-docs #8877, #5668).
    "no-mailbox": (400, "AuthenticationError", "Error authenticating with resource"),
    # A mailbox hosted on-premises (msgraph-sdk-dotnet #688).
    "on-premises": (404, "MailboxNotHostedInExchangeOnline",
                    "Mailbox is hosted by an on-premise or non-Exchange server, which is "
                    "not supported."),
    "item-not-found": (404, "ErrorItemNotFound", "The specified object was not found in "
                       "the store., The process failed to get the correct properties."),
    "image-not-found": (404, "ImageNotFound", "Exception of type 'Microsoft.Fast.Profile."
                        "Core.Exception.ImageNotFoundException' was thrown."),
    "resource-not-found": (404, "Request_ResourceNotFound", "Resource does not exist or one "
                           "of its queried reference-property objects are not present."),
}
# What a gateway in front of Graph sends when Graph is down: HTML, not JSON.
GATEWAY_HTML = (b"<html><head><title>503 Service Unavailable</title></head><body>"
                b"<h1>Service Unavailable</h1></body></html>")


@dataclass(slots=True)
class _Injection:
    status: int
    remaining: int
    headers: Mapping[str, str]
    path_contains: str | None
    fault: str = ""  # one of FAULTS, status unused
    delay: float = 0.0
    error: tuple[str, str] | None = None  # (code, message) of the JSON error body
    html: bytes | None = None  # an HTML body instead of Graph's JSON


# What ``FakeGraph.fault`` can do to a request, instead of (or before) answering it.
FAULTS = ("drop", "slow", "corrupt", "truncated", "huge", "bomb", "not-image")
HUGE_BODY_BYTES = 17 * 1024 * 1024  # more than any real Graph photo


def bomb_png(side: int = 20000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


class FakeGraph:
    """People plus knobs; ``app()`` serves them under ``/v1.0`` and ``/beta``."""

    def __init__(self, people: Iterable[FakePerson] = ()) -> None:
        self.requests: list[RecordedRequest] = []
        self.latency = 0.0
        self.arrived = asyncio.Condition()  # notified as each request arrives
        self.accept_token: Callable[[str], bool] = lambda token: bool(token)
        self._people: dict[str, FakePerson] = {}
        self._injections: list[_Injection] = []
        self._jpegs: dict[tuple[str, str, int, int], bytes] = {}
        self._generation = 0
        self._groups: dict[str, FakeGroup] = {}
        # Application permissions the app registration lacks: calls needing
        # one of them answer 403 (see ``_required_permissions``).
        self.denied: set[str] = set()
        self.page_size = 100  # users per page of the /users listing
        self.gzip_json = True  # JSON answers gzip-compressed when the client accepts it
        for person in people:
            self.add(person)

    def add(self, person: FakePerson) -> FakePerson:
        # UPNs and object ids both match case-insensitively in Entra ID.
        self._people[person.upn.lower()] = person
        self._people[person.object_id.lower()] = person
        return person

    def person(self, upn_or_id: str) -> FakePerson:
        return self._people[upn_or_id.lower()]

    @property
    def people(self) -> list[FakePerson]:
        return list({id(p): p for p in self._people.values()}.values())

    def find(self, predicate: Callable[[FakePerson], bool]) -> FakePerson:
        """The first person matching; LookupError if none does."""
        for person in self.people:
            if predicate(person):
                return person
        raise LookupError("no such person in the fake tenant")

    def set_photo(self, upn_or_id: str, image: Image.Image | None) -> str:
        """Replace (or remove) a photo; returns the new mediaEtag ("" when removed)."""
        person = self.person(upn_or_id)
        self._generation += 1
        person.photo = image
        person.media_etag = _etag(person.object_id, self._generation) if image else ""
        self._jpegs = {k: v for k, v in self._jpegs.items() if k[0] != person.object_id}
        person.raw = None
        return person.media_etag

    def set_raw_photo(self, upn_or_id: str, raw: RawPhoto) -> str:
        """Serve exact bytes as the person's photo; returns the new mediaEtag."""
        self.set_photo(upn_or_id, None)
        person = self.person(upn_or_id)
        person.raw = raw
        person.media_etag = _etag(person.object_id, self._generation)
        return person.media_etag

    def count(self, match: str | Callable[[RecordedRequest], bool] | None = None) -> int:
        """Requests recorded: all, those whose raw path contains ``match``, or matching it."""
        if match is None:
            return len(self.requests)
        if isinstance(match, str):
            return sum(match in r.raw_path for r in self.requests)
        return sum(bool(match(r)) for r in self.requests)

    def reset_requests(self) -> None:
        self.requests.clear()

    def inject(self, status: int = 0, times: int = 1, headers: Mapping[str, str] | None = None,
               path_contains: str | None = None, *, error: str | None = None,
               html: bytes | None = None) -> None:
        """Fail the next ``times`` requests (whose raw path contains ``path_contains``):
        with ``status`` and its usual JSON error, one of the ``REAL_ERRORS`` by name
        (its status unless ``status`` is given), or an ``html`` body (a gateway's)."""
        code_message = None
        if error is not None:
            real_status, code, message = REAL_ERRORS[error]
            status, code_message = status or real_status, (code, message)
        status = status or 503  # an html body alone: a gateway's outage page
        self._injections.append(_Injection(status, times, dict(headers or {}), path_contains,
                                           error=code_message, html=html))

    def fault(self, kind: str, times: int = 1, path_contains: str | None = None,
              delay: float = 0.0) -> None:
        """Misbehave on the next ``times`` matching requests: ``drop`` the connection
        unanswered, answer after ``delay`` seconds (``slow``), or send photo bytes
        that are ``corrupt``, ``truncated``, ``huge``, a decompression ``bomb`` or
        ``not-image`` (HTML) with a 200 and ``image/jpeg``."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        self._injections.append(_Injection(200, times, {}, path_contains, kind, delay))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gzip_json])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    @web.middleware
    async def _gzip_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Graph compresses JSON for clients that accept gzip (``gzip_json``)."""
        response: web.StreamResponse = await handler(request)
        if (self.gzip_json and "gzip" in request.headers.get("Accept-Encoding", "")
                and response.content_type == "application/json"):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        self.requests.append(RecordedRequest(request.method, request.raw_path, authorization,
                                             at=time.monotonic()))
        async with self.arrived:
            self.arrived.notify_all()
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        injected = self._take_injection(request.raw_path)
        if injected is not None and injected.fault:
            return await self._faulty(request, injected)
        if injected is not None:
            return _injected_answer(injected)
        if not self._authorized(authorization):
            return _error(401, "InvalidAuthenticationToken",
                          "Access token is empty." if not authorization
                          else "Access token validation failure. Invalid audience.")
        if request.method == "POST" and request.raw_path.partition("?")[0].endswith("/$batch"):
            return await self._batch(request)
        if request.method not in ("GET", "HEAD"):
            return _error(405, "Request_BadRequest",
                          "Specified HTTP method is not allowed for the request target.")
        # Read the raw path: we must see what the client encoded, not what a
        # router decoded. '#' cannot arrive (clients cut it as a fragment); '%23' can.
        path, _, query = request.raw_path.partition("?")
        segments = [unquote(segment) for segment in path.split("/")[1:]]
        if segments[0] not in _VERSIONS:
            return _error(400, "BadRequest", f"Invalid version: {segments[0]}")
        root = f"{request.scheme}://{request.host}/{segments[0]}"
        return self._route(root, segments[1:], parse_qs(query, keep_blank_values=True))

    async def _faulty(self, request: web.Request, injected: _Injection) -> web.Response:
        if injected.fault == "slow":
            await asyncio.sleep(injected.delay)
            return await self._handle_unrecorded(request)
        if injected.fault == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing is sent: the client sees a reset
        answer = await self._handle_unrecorded(request)
        good = answer.body if isinstance(answer.body, bytes) else b""
        bodies = {"corrupt": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
                  "truncated": good[: len(good) // 2],
                  "huge": b"\xff\xd8\xff\xe0" + bytes(HUGE_BODY_BYTES),
                  "bomb": bomb_png(),
                  "not-image": b"<html><body>Sign in</body></html>"}
        return web.Response(body=bodies[injected.fault], content_type="image/jpeg")

    async def _handle_unrecorded(self, request: web.Request) -> web.Response:
        """The normal answer, without recording the request or taking injections."""
        count = len(self.requests)
        saved, self._injections = self._injections, []
        try:
            return await self._handle(request)
        finally:
            self._injections = saved + self._injections
            del self.requests[count:]

    def _take_injection(self, raw_path: str) -> _Injection | None:
        for injection in self._injections:
            if injection.path_contains is None or injection.path_contains in raw_path:
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._injections.remove(injection)
                return injection
        return None

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and bool(token) and self.accept_token(token)

    def _route(self, root: str, segments: list[str], query: dict[str, list[str]]) -> web.Response:
        required = _required_permissions(segments, query)
        if required and all(permission in self.denied for permission in required):
            return _error(403, "Authorization_RequestDenied", _DEFAULT_ERRORS[403][1])
        if segments and segments[0] in ("groups", "teams"):
            return self._route_group(root, segments)
        if segments == ["users"]:
            return self._list_users(root, query)
        found = _parse_user(segments)
        if isinstance(found, web.Response):
            return found
        key, tail = found
        person = self._people.get(key.lower())
        if person is None:
            return _error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or "
                          "one of its queried reference-property objects are not present.")
        match tail:
            case []:
                return _user_json(root, person, query.get("$select", []))
            case ["photo"]:
                return self._largest_meta(root, person)
            case ["photo", "$value"]:
                if not person.sizes():
                    return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])
                return self._jpeg_response(person, *person.sizes()[-1])
            case ["photos"]:
                return self._list_meta(root, person)
            case ["photos", size] | ["photos", size, "$value"]:
                parsed = _SIZE_ID.match(size)
                if parsed is None:
                    return _error(400, "BadRequest", f"Invalid photo size '{size}'.")
                wanted = (int(parsed[1]), int(parsed[2]))
                return self._sized(root, person, wanted, value=len(tail) == 3)
        return _error(400, "BadRequest", f"Resource not found for the segment '{tail[0]}'.")

    def _largest_meta(self, root: str, person: _PhotoOwner) -> web.Response:
        sizes = person.sizes()
        if sizes:
            return _json(_meta(root, person, *sizes[-1]))
        if person.placeholder:
            # The documented "no photo" answer; many real tenants send 404 instead.
            return _json(_meta(root, person, 1, 1, content_type="image/gif", etag=""))
        return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])

    def _list_meta(self, root: str, person: FakePerson) -> web.Response:
        if not person.sizes():
            return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])
        entries = [_meta(root, person, w, h, context=False) for w, h in person.sizes()]
        return _json({"@odata.context": f"{root}/$metadata#users('{person.object_id}')/photos",
                      "value": entries})

    def _sized(self, root: str, person: _PhotoOwner, wanted: tuple[int, int],
               *, value: bool) -> web.Response:
        sizes = person.sizes()
        if not sizes and not person.placeholder:
            return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])
        if wanted in sizes:
            if value:
                return self._jpeg_response(person, *wanted)
            return _json(_meta(root, person, *wanted))
        if value and not sizes:
            return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])
        # "If the specified size is unavailable ... the size 1x1 is returned
        # with the rest of the metadata": so the mediaEtag stays.
        if value:
            return web.Response(body=ONE_PIXEL_GIF, content_type="image/gif")
        return _json(_meta(root, person, 1, 1, content_type="image/gif"))

    def _jpeg_response(self, person: _PhotoOwner, width: int, height: int) -> web.Response:
        if isinstance(person, FakePerson) and person.raw is not None:
            return person.raw.response(width, height)
        key = (person.object_id, person.media_etag, width, height)
        body = self._jpegs.get(key)
        if body is None:
            assert person.photo is not None
            image = person.photo.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            body = self._jpegs[key] = buffer.getvalue()
        return web.Response(body=body, content_type="image/jpeg")

    # -- groups, teams, the /users listing and $batch ---------------------------

    def add_group(self, group: FakeGroup) -> FakeGroup:
        self._groups[group.object_id.lower()] = group
        return group

    def group(self, object_id: str) -> FakeGroup:
        return self._groups[object_id.lower()]

    def _route_group(self, root: str, segments: list[str]) -> web.Response:
        kind, key, tail = segments[0], (segments[1:2] or [""])[0], segments[2:]
        group = self._groups.get(key.lower())
        if group is None or (kind == "teams" and not group.team):
            return _error(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist.")
        match tail:
            case []:
                return _json({"@odata.context": f"{root}/$metadata#{kind}/$entity",
                              "id": group.object_id, "displayName": group.display_name})
            case ["photo"]:
                return self._largest_meta(root, group)
            case ["photo", "$value"] if group.sizes():
                return self._jpeg_response(group, *group.sizes()[-1])
            case ["photo", "$value"]:
                return _error(404, "ImageNotFound", _DEFAULT_ERRORS[404][1])
            case ["photos", size] | ["photos", size, "$value"] if kind == "groups":
                parsed = _SIZE_ID.match(size)
                if parsed is None:
                    return _error(400, "BadRequest", f"Invalid photo size '{size}'.")
                wanted = (int(parsed[1]), int(parsed[2]))
                return self._sized(root, group, wanted, value=len(tail) == 3)
        # Teams have no /photos navigation: only the largest photo.
        return _error(400, "BadRequest", f"Resource not found for the segment '{tail[0]}'.")

    def _list_users(self, root: str, query: dict[str, list[str]]) -> web.Response:
        """``/users`` with ``$filter``, ``$select``, ``$top``; pages via ``@odata.nextLink``."""
        people = sorted(self.people, key=lambda p: p.object_id)
        expression = ",".join(query.get("$filter", []))
        if expression:
            matches = _user_filter(expression)
            if matches is None:
                return _error(400, "Request_UnsupportedQuery",
                              f"Unsupported or invalid query filter clause: {expression}")
            people = [p for p in people if matches(p)]
        top = min(999, int((query.get("$top") or ["100"])[0]), self.page_size)
        start = int((query.get("$skiptoken") or ["0"])[0])
        values = []
        for person in people[start:start + top]:
            selected = _user_json(root, person, query.get("$select", []))
            if selected.status != 200:
                return selected
            body = json.loads(selected.body)  # type: ignore[arg-type]
            body.pop("@odata.context", None)
            values.append(body)
        page: dict[str, Any] = {"@odata.context": f"{root}/$metadata#users", "value": values}
        if start + top < len(people):
            rest = {k: v for k, v in query.items() if k != "$skiptoken"}
            rest["$skiptoken"] = [str(start + top)]
            page["@odata.nextLink"] = f"{root}/users?" + urlencode(rest, doseq=True,
                                                                    quote_via=quote)
        return _json(page)

    async def _batch(self, request: web.Request) -> web.Response:
        """JSON batching: at most 20 sub-requests, each answered (and throttled) alone."""
        try:
            items = (await request.json())["requests"]
            assert isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _error(400, "BadRequest", "Invalid batch payload.")
        if not 1 <= len(items) <= 20:
            return _error(400, "BadRequest", "Number of batch requests must be 1 to 20.")
        version = request.raw_path.split("/")[1]
        root = f"{request.scheme}://{request.host}/{version}"
        responses = [self._sub_request(root, version, item) for item in items]
        return _json({"responses": responses})

    def _sub_request(self, root: str, version: str, item: Any) -> dict[str, Any]:
        ident, url = str(item.get("id", "")), str(item.get("url", ""))
        raw_path = f"/{version}/" + url.lstrip("/")
        self.requests.append(RecordedRequest("GET", raw_path, None, batched=True,
                                             at=time.monotonic()))
        injected = self._take_injection(raw_path)
        if injected is not None:
            reply = _injected_answer(injected)
        elif item.get("method", "GET") != "GET":
            reply = _error(405, "Request_BadRequest", "Only GET in this fake's batches.")
        else:
            path, _, query = url.partition("?")
            segments = [unquote(segment) for segment in path.lstrip("/").split("/")]
            reply = self._route(root, segments, parse_qs(query, keep_blank_values=True))
        body: Any = reply.body if isinstance(reply.body, bytes) else b""
        if reply.content_type == "application/json":
            body = json.loads(body)
        else:
            body = base64.b64encode(body).decode("ascii")  # binary bodies travel as base64
        headers = {k: v for k, v in reply.headers.items() if k.lower() != "content-length"}
        return {"id": ident, "status": reply.status, "headers": headers, "body": body}


@dataclass(eq=False)
class FakeGroup:
    """A Microsoft 365 group; with ``team`` it is also a team (same object id).

    A group's photo comes in the HD sizes like an Exchange photo; through
    ``/teams/{id}`` only the largest is reachable.
    """

    object_id: str
    display_name: str
    photo: Image.Image | None = None
    team: bool = False
    media_etag: str = ""
    placeholder: bool = False
    capital_x: bool = False

    def __post_init__(self) -> None:
        if self.photo is not None and not self.media_etag:
            self.media_etag = _etag(self.object_id, 0)

    def size_id(self, width: int, height: int) -> str:
        return f"{width}x{height}"

    def sizes(self) -> list[tuple[int, int]]:
        return available_sizes(self.photo)


_PhotoOwner = FakePerson | FakeGroup
_FILTER_CLAUSES: tuple[tuple[re.Pattern[str],
                             Callable[[re.Match[str], FakePerson], bool]], ...] = (
    (re.compile(r"^accountEnabled eq (true|false)$", re.I),
     lambda m, p: p.account_enabled == (m[1].lower() == "true")),
    (re.compile(r"^mail eq '((?:[^']|'')*)'$", re.I),
     lambda m, p: (p.mail or "").lower() == m[1].replace("''", "'").lower()),
    (re.compile(r"^proxyAddresses/any\((\w+):\1 eq '((?:[^']|'')*)'\)$", re.I),
     lambda m, p: m[2].replace("''", "'").lower() in (a.lower() for a in p.proxy_addresses)),
)


def _user_filter(expression: str) -> Callable[[FakePerson], bool] | None:
    """The few ``$filter`` forms avatarproxy sends, joined by ``or``; None if unsupported."""
    tests: list[tuple[Callable[[re.Match[str], FakePerson], bool], re.Match[str]]] = []
    for clause in re.split(r"\s+or\s+", expression.strip()):
        for pattern, test in _FILTER_CLAUSES:
            found = pattern.match(clause.strip())
            if found is not None:
                tests.append((test, found))
                break
        else:
            return None
    return lambda person: any(test(found, person) for test, found in tests)


def _required_permissions(segments: list[str], query: dict[str, list[str]]) -> tuple[str, ...]:
    """Application permissions that allow a call (any one of them suffices)."""
    head = segments[0] if segments else ""
    photo = any(segment in ("photo", "photos") for segment in segments[1:3])
    if head == "teams":
        return ("Team.ReadBasic.All",)
    if head == "groups":
        return (("ProfilePhoto.Read.All",) if photo
                else ("Group.Read.All", "GroupMember.Read.All"))
    if segments == ["users"]:
        if "accountenabled" in ",".join(query.get("$filter", [])).lower():
            return ("User.Read.All",)  # filtering on accountEnabled needs the full profile
        return ("User.ReadBasic.All", "User.Read.All")
    if photo:
        return ("ProfilePhoto.Read.All",)
    return ("User.ReadBasic.All", "User.Read.All") if head.startswith("users") else ()


def _parse_user(segments: list[str]) -> tuple[str, list[str]] | web.Response:
    """``users/{key}/...`` or ``users('{key}')/...`` -> (key, rest of the path)."""
    head = segments[0] if segments else ""
    form = _KEY_FORM.match(head)
    if form is not None:
        inner = form[1]
        if len(inner) >= 2 and inner[0] == inner[-1] == "'":
            quoted = inner[1:-1]
            # Inside an OData string literal a quote is doubled; a lone one ends it.
            if "'" in quoted.replace("''", ""):
                return _error(400, "BadRequest", f"Syntax error at position {len(head)} "
                              f"in '{head}'.")
            inner = quoted.replace("''", "'")
        return inner, segments[1:]
    if head != "users" or len(segments) < 2 or not segments[1]:
        return _error(400, "BadRequest", f"Resource not found for the segment '{head}'.")
    if segments[1].startswith("$"):
        # OData reads '$...' as a system segment: Graph wants users('$name') here.
        return _error(400, "BadRequest", f"Resource not found for the segment '{segments[1]}'.")
    return segments[1], segments[2:]


def _user_json(root: str, person: FakePerson, select: list[str]) -> web.Response:
    values: dict[str, Any] = {"id": person.object_id, "displayName": person.display_name,
                              "givenName": person.given_name, "surname": person.surname,
                              "userPrincipalName": person.upn, "mail": person.mail,
                              "proxyAddresses": list(person.proxy_addresses),
                              "accountEnabled": person.account_enabled}
    fields = list(_USER_FIELDS)
    if select:
        by_lower = {name.lower(): name for name in values}
        fields = []
        for name in ",".join(select).split(","):
            if name.strip().lower() not in by_lower:
                return _error(400, "Request_BadRequest", f"Could not find a property named "
                              f"'{name.strip()}' on type 'microsoft.graph.user'.")
            fields.append(by_lower[name.strip().lower()])
    body: dict[str, Any] = {"@odata.context": f"{root}/$metadata#users/$entity"}
    body.update((name, values[name]) for name in fields)
    return _json(body)


def _meta(root: str, person: _PhotoOwner, width: int, height: int, *,
          content_type: str = "image/jpeg", etag: str | None = None,
          context: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if context:
        meta["@odata.context"] = f"{root}/$metadata#users('{person.object_id}')/photo/$entity"
    meta.update({"@odata.mediaContentType": content_type,
                 "@odata.mediaEtag": person.media_etag if etag is None else etag,
                 "id": person.size_id(width, height), "width": width, "height": height})
    return meta


def _json(body: Mapping[str, Any], status: int = 200,
          headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, body=json.dumps(body).encode(), headers=headers)
    response.headers["Content-Type"] = _ODATA_JSON
    return response


def _error(status: int, code: str, message: str,
           headers: Mapping[str, str] | None = None) -> web.Response:
    request_id = str(uuid.uuid4())
    body = {"error": {"code": code, "message": message,
                      "innerError": {"request-id": request_id, "client-request-id": request_id}}}
    return _json(body, status, {"request-id": request_id, **(headers or {})})


def _injected_answer(injected: _Injection) -> web.Response:
    if injected.html is not None:
        return web.Response(status=injected.status, body=injected.html,
                            content_type="text/html", headers=injected.headers)
    code, message = injected.error or _DEFAULT_ERRORS.get(
        injected.status, ("UnknownError", "Injected failure."))
    return _error(injected.status, code, message, headers=injected.headers)


def _etag(object_id: str, generation: int) -> str:
    return f'"{zlib.crc32(f"{object_id}/{generation}".encode()):08X}"'


def portrait(width: int, height: int, top: str, bottom: str, accent: str) -> Image.Image:
    """A synthetic photo: a vertical gradient, a head and shoulders, a white
    top-left corner mark (so a flip or a bad crop shows). Deterministic."""
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), bottom),
                            Image.new("RGB", (width, height), top), mask)
    draw = ImageDraw.Draw(image)
    side, cx = min(width, height), width / 2
    draw.ellipse((cx - side * 0.17, height * 0.2, cx + side * 0.17, height * 0.2 + side * 0.34),
                 fill=accent)
    draw.ellipse((cx - side * 0.36, height * 0.62, cx + side * 0.36, height * 0.62 + side * 0.7),
                 fill=accent)
    draw.rectangle((0, 0, max(1, width // 10), max(1, height // 10)), fill="white")
    return image


@dataclass(frozen=True, slots=True)
class _Demo:
    upn: str
    object_id: str
    display_name: str
    given_name: str | None
    surname: str | None
    size: tuple[int, int] | None
    colours: tuple[str, str, str] = ("#1f6feb", "#8957e5", "#f0d9b5")
    placeholder: bool = False
    capital_x: bool = False


_DEMO = (
    _Demo("adele.vance@contoso.com", "87d349ed-44d7-43e1-9a83-5f2406dee5bd", "Adele Vance",
          "Adele", "Vance", (648, 648), ("#0b5394", "#6fa8dc", "#f6d7b0"), capital_x=True),
    _Demo("alex.wilber@contoso.com", "5c3b8d0e-7a4f-4c2e-9f1a-3e6d2b8c1f40", "Alex Wilber",
          "Alex", "Wilber", (240, 240), ("#38761d", "#b6d7a8", "#e0ac69")),
    _Demo("megan.bowen@contoso.com", "48d31887-5fad-4d73-a9f5-3c356e68a038", "Megan Bowen",
          "Megan", "Bowen", (96, 96), ("#990000", "#ea9999", "#c68642"), capital_x=True),
    _Demo("lee.gu@contoso.com", "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", "Lee Gu",
          "Lee", "Gu", (300, 200), ("#7f6000", "#ffd966", "#8d5524")),
    _Demo("lynne.robbins@contoso.com", "e8f1b2a3-4c5d-4e6f-9a0b-1c2d3e4f5a6b", "Lynne Robbins",
          "Lynne", "Robbins", (504, 504), ("#20124d", "#b4a7d6", "#ffdbac")),
    _Demo("diego.siciliani@contoso.com", "1d2e3f4a-5b6c-4d7e-8f9a-0b1c2d3e4f5a",
          "Diego Siciliani", "Diego", "Siciliani", None),
    _Demo("isaiah.langer@contoso.com", "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f", "Isaiah Langer",
          "Isaiah", "Langer", None, placeholder=True),
    _Demo("john_fabrikam.com#EXT#@contoso.onmicrosoft.com",
          "f0e1d2c3-b4a5-4968-8776-655443322110", "John Smith (Fabrikam)", "John", "Smith",
          (120, 120), ("#134f5c", "#76a5af", "#f1c27d")),
    _Demo("$admin@contoso.com", "0a1b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d", "Contoso Admin",
          None, None, (64, 64), ("#434343", "#cccccc", "#3d85c6")),
    _Demo("o'brien@contoso.com", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "Patrick O'Brien",
          "Patrick", "O'Brien", (360, 360), ("#274e13", "#93c47d", "#ffe0bd"), capital_x=True),
    _Demo("elodie.dupre@contoso.com", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", "Élodie Dupré",
          "Élodie", "Dupré", (432, 432), ("#741b47", "#d5a6bd", "#e5c298")),
    _Demo("dmitry.ivanov@contoso.com", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e", "Дмитрий Иванов",
          "Дмитрий", "Иванов", None),
    _Demo("nikos.papadopoulos@contoso.com", "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6c",
          "Νίκος Παπαδόπουλος", "Νίκος", "Παπαδόπουλος", (48, 48),
          ("#0c343d", "#a2c4c9", "#d2a679")),
    _Demo("mohammed.ali@contoso.com", "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d", "محمد علي",
          "محمد", "علي", None),
    _Demo("david.levi@contoso.com", "4f5a6b7c-8d9e-4f0a-9b1c-2d3e4f5a6b7c", "דוד לוי",
          "דוד", "לוי", None),
    _Demo("taro.yamada@contoso.com", "8c9d0e1f-2a3b-4c4d-8e5f-6a7b8c9d0e1f", "山田 太郎",
          "太郎", "山田", None),
)


def demo_people() -> list[FakePerson]:
    """The demo tenant (contoso.com): fixed ids, deterministic photos, fresh objects."""
    return [
        FakePerson(upn=d.upn, object_id=d.object_id, display_name=d.display_name,
                   given_name=d.given_name, surname=d.surname,
                   photo=portrait(*d.size, *d.colours) if d.size else None,
                   placeholder=d.placeholder, capital_x=d.capital_x)
        for d in _DEMO
    ]


def demo_groups() -> list[FakeGroup]:
    """Demo groups and teams (a team is a group with the same object id)."""
    return [
        FakeGroup("2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", "Mark 8 Project Team",
                  photo=portrait(648, 648, "#5b0f00", "#e06666", "#fce5cd"), team=True),
        FakeGroup("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", "Retail Managers",
                  photo=portrait(240, 240, "#073763", "#9fc5e8", "#fff2cc")),
        FakeGroup("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "Sales and Marketing", team=True),
    ]


async def start_fake_graph(graph: FakeGraph, host: str = "127.0.0.1",
                           port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve ``graph``; returns the runner (``await runner.cleanup()``) and the
    v1.0 base URL, e.g. ``http://127.0.0.1:PORT/v1.0``."""
    runner = web.AppRunner(graph.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}/v1.0"
