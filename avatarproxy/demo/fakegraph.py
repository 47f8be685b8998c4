"""A fake of Microsoft Graph's user photo API, served in-process.

Tests point avatarproxy at it to see exactly what it sends (``requests`` keeps
every raw path and Authorization header) and to make Graph misbehave
(``inject`` an error status, ``fault`` for dropped connections, slow
answers and bad photo bytes, ``latency``); ``avatarproxy demo`` serves it with
``contoso.demo_people()`` as a tenant. The tenant and its answers are
``faketenant.FakeTenant``'s; this module adds HTTP: the token check, the
recording, injected failures, gzip and ``$batch``. It deliberately shares no
code with the client it exercises.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from aiohttp import web

from .faketenant import FakeTenant
from .graphanswers import DEFAULT_ERRORS, REAL_ERRORS, error_response, json_response
from .people import FakePerson

_VERSIONS = frozenset({"v1.0", "beta"})


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


class FakeGraph(FakeTenant):
    """A tenant plus knobs; ``app()`` serves it under ``/v1.0`` and ``/beta``."""

    def __init__(self, people: Iterable[FakePerson] = ()) -> None:
        super().__init__(people)
        self.requests: list[RecordedRequest] = []
        self.latency = 0.0
        self.arrived = asyncio.Condition()  # notified as each request arrives
        # Cleared: each request, recorded and notified, waits until it is set again.
        self.gate = asyncio.Event()
        self.gate.set()
        self.accept_token: Callable[[str], bool] = lambda token: bool(token)
        self._injections: list[_Injection] = []
        self.gzip_json = True  # JSON answers gzip-compressed when the client accepts it

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
        await self.gate.wait()
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        injected = self._take_injection(request.raw_path)
        if injected is not None and injected.fault:
            return await self._faulty(request, injected)
        if injected is not None:
            return _injected_answer(injected)
        if not self._authorized(authorization):
            return error_response(401, "InvalidAuthenticationToken",
                                  "Access token is empty." if not authorization
                                  else "Access token validation failure. Invalid audience.")
        if request.method == "POST" and request.raw_path.partition("?")[0].endswith("/$batch"):
            return await self._batch(request)
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "Request_BadRequest",
                                  "Specified HTTP method is not allowed for the request target.")
        # Read the raw path: we must see what the client encoded, not what a
        # router decoded. '#' cannot arrive (clients cut it as a fragment); '%23' can.
        path, _, query = request.raw_path.partition("?")
        segments = [unquote(segment) for segment in path.split("/")[1:]]
        if segments[0] not in _VERSIONS:
            return error_response(400, "BadRequest", f"Invalid version: {segments[0]}")
        root = f"{request.scheme}://{request.host}/{segments[0]}"
        return self.answer(root, segments[1:], parse_qs(query, keep_blank_values=True))

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

    async def _batch(self, request: web.Request) -> web.Response:
        """JSON batching: at most 20 sub-requests, each answered (and throttled) alone."""
        try:
            items = (await request.json())["requests"]
            assert isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return error_response(400, "BadRequest", "Invalid batch payload.")
        if not 1 <= len(items) <= 20:
            return error_response(400, "BadRequest", "Number of batch requests must be 1 to 20.")
        version = request.raw_path.split("/")[1]
        root = f"{request.scheme}://{request.host}/{version}"
        responses = [self._sub_request(root, version, item) for item in items]
        return json_response({"responses": responses})

    def _sub_request(self, root: str, version: str, item: Any) -> dict[str, Any]:
        ident, url = str(item.get("id", "")), str(item.get("url", ""))
        raw_path = f"/{version}/" + url.lstrip("/")
        self.requests.append(RecordedRequest("GET", raw_path, None, batched=True,
                                             at=time.monotonic()))
        injected = self._take_injection(raw_path)
        if injected is not None:
            reply = _injected_answer(injected)
        elif item.get("method", "GET") != "GET":
            reply = error_response(405, "Request_BadRequest", "Only GET in this fake's batches.")
        else:
            path, _, query = url.partition("?")
            segments = [unquote(segment) for segment in path.lstrip("/").split("/")]
            reply = self.answer(root, segments, parse_qs(query, keep_blank_values=True))
        body: Any = reply.body if isinstance(reply.body, bytes) else b""
        if reply.content_type == "application/json":
            body = json.loads(body)
        else:
            body = base64.b64encode(body).decode("ascii")  # binary bodies travel as base64
        headers = {k: v for k, v in reply.headers.items() if k.lower() != "content-length"}
        return {"id": ident, "status": reply.status, "headers": headers, "body": body}


def _injected_answer(injected: _Injection) -> web.Response:
    if injected.html is not None:
        return web.Response(status=injected.status, body=injected.html,
                            content_type="text/html", headers=injected.headers)
    code, message = injected.error or DEFAULT_ERRORS.get(
        injected.status, ("UnknownError", "Injected failure."))
    return error_response(injected.status, code, message, headers=injected.headers)


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
