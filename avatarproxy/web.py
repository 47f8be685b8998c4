"""HTTP: parse the request, call the service, write headers.

Errors become responses in one place: a client's mistake gets its status
from ``_STATUS`` (``refusal``: short ``text/plain``, ``Cache-Control:
no-store``, never a stack trace), and so does a request aiohttp cannot parse
(``_unparseable``, which ``take_over_aiohttp_answers`` installs); anything else
the service raises for an avatar (a dependency, a load cap) gets initials,
``no-store`` (``_serve``): avatars are decoration, never a 5xx. Client mistakes
are logged by ``logs.client_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web, web_response
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, InvalidURLError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict, CIMultiDictProxy

from . import logs, metrics
from .conditional import none_match
from .contacts import ContactRules
from .costs import Admit
from .errors import (
    AvatarProxyError,
    BadRequest,
    Blocked,
    Forbidden,
    NotFound,
    RateLimited,
    RefusedPerson,
)
from .gravatar import ROUTE_PATTERN, parse_hash_request
from .hashavatars import HashAvatars
from .headers import PREFLIGHT_HEADERS, allowed_origin, answer_headers, cors_headers
from .inputs import known_params, parse_fallback, parse_object_id, parse_size, parse_subject
from .models import Avatar, StandIn, Subject
from .negotiation import OutputFormats, choose, parse_format
from .ratelimit import RateLimiter
from .security import ClientAddress, Policy
from .server import ServerSettings
from .service import AvatarService
from .sites import Sites

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Handling:
    """What the avatar handlers read, in one app key (``HANDLING``): one lookup a
    request rather than one per part. Set once the service has started."""

    service: AvatarService
    policy: Policy
    sites: Sites
    server: ServerSettings
    max_size: int
    default_format: str
    clients: ClientAddress
    limiter: RateLimiter
    contacts: ContactRules
    hashes: HashAvatars | None  # directory.gravatar


HANDLING: web.AppKey[Handling] = web.AppKey("handling", Handling)
# What was wrong with a refused request, for its access line.
REASON: web.RequestKey[str] = web.RequestKey("reason", str)

# The one error-to-status table: the client's mistakes. Every other error
# reaching an avatar route is answered with stand-in initials (``_serve``).
_STATUS: tuple[tuple[type[AvatarProxyError], int], ...] = (
    (BadRequest, 400), (Forbidden, 403), (NotFound, 404))


def _status(exc: AvatarProxyError) -> int | None:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Cache-Control": "no-store"})


def _refused(request: web.Request, status: int, reason: str, *, mistake: bool) -> web.Response:
    """A client's request refused with ``reason``; ``mistake``: worth a (rate-limited)
    log line, unlike a 404 that is an avatar route's ordinary answer."""
    request[REASON] = reason
    if mistake:
        logs.client_error(f"{status} {reason}")
    return _plain(status, reason)


def refusal(request: web.Request, exc: Exception) -> web.Response:
    """The answer to ``exc`` escaping a handler (``ops.observe`` asks); re-raised
    if it is not an error this table answers (aiohttp then answers it)."""
    if isinstance(exc, AvatarProxyError):
        status = _status(exc)
        if status is not None:
            return _refused(request, status, exc.public, mistake=status != 404)
        # The route, not the path: the path names a person (logging.log_upn).
        route = request.match_info.route.resource
        log.error("unhandled %s on %s: %s", type(exc).__name__,
                  route.canonical if route is not None else "unmatched", exc)
        return _plain(500, "internal error")
    if not isinstance(exc, web.HTTPException) or exc.status < 400:
        raise exc
    # aiohttp's own 404/405: keep the status, drop its HTML-ish body.
    response = _refused(request, exc.status, exc.reason, mistake=exc.status < 500)
    if "Allow" in exc.headers:  # a 405 says which methods the resource takes
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _user(request: web.Request, handling: Handling) -> Subject:
    return parse_subject(request.match_info["subject"])


def _group(request: web.Request, handling: Handling) -> Subject:
    return parse_object_id(request.match_info["id"], "group")


def _team(request: web.Request, handling: Handling) -> Subject:
    return parse_object_id(request.match_info["id"], "team")


def _contact(request: web.Request, handling: Handling) -> Subject:
    # A mailbox not listed (or the route off) is a 404 before anything is parsed.
    return handling.contacts.contact(request.match_info["mailbox"],
                                     request.match_info["contact"])


async def avatar(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _user)


async def group_avatar(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _group)


async def team_avatar(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _team)


async def contact_avatar(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _contact)


async def _serve(request: web.Request,
                 parse: Callable[[web.Request, Handling], Subject]) -> web.StreamResponse:
    handling = request.app[HANDLING]
    policy = handling.policy
    params = known_params(request.query)
    # Before anything else: an unsigned request learns nothing, costs nothing.
    policy.check_signature(request.path, params.get("sig"))
    subject = parse(request, handling)
    size = parse_size(request.match_info["size"], handling.max_size)
    # Another website's page would learn from a 404 who has no photo: initials.
    fallback = parse_fallback(params) or handling.sites.foreign(request.headers)
    # Other query parameters (cache busters such as ?v=3) are ignored.
    formats = choose(parse_format(params.get("format")),
                     request.headers.get("Accept", ""), size, handling.default_format)
    policy.check_subject(subject)
    service = handling.service
    try:
        # Most requests: the answer is in this process's memory, nothing to await.
        hot = None if policy.withholds(subject) else service.memory_hit(
            subject, size, formats, fallback)
        if hot is not None:
            return _respond(request, handling, hot, formats)
        return await _answer(request, handling, subject, size, formats, fallback)
    except AvatarProxyError as exc:
        if _status(exc) is not None:
            raise  # the client's mistake (or ?fallback=404): refusal answers
        # The service answers its own failures; should one escape, still a picture.
        log.warning("answering with stand-in initials: %s: %s", type(exc).__name__, exc)
        metrics.initials_fallback(type(exc).__name__)
        why: StandIn = "rate-limited" if isinstance(exc, RateLimited) else "error"
        return _respond(request, handling, service.stand_in(subject, size, why), formats)
    except Exception as exc:  # a bug of ours: still a picture, never a 5xx
        log.error("answering with stand-in initials after an unexpected %s",
                  type(exc).__name__, exc_info=exc)
        metrics.initials_fallback("internal")
        return _respond(request, handling, service.stand_in(subject, size, "error"), formats)


async def _answer(request: web.Request, handling: Handling, subject: Subject, size: int,
                  formats: OutputFormats, fallback: bool) -> web.Response:
    service = handling.service
    # A client over its rate gets initials from the service (no-store), not an error.
    admit = _admit(request, handling)
    try:
        handling.policy.check_blocked(subject)
        # ``_serve`` asked memory_hit already: not again.
        result = await service.fetch_avatar(subject, size, formats, fallback, admit)
    except Blocked as exc:
        # Never the photo: the name the page used, drawn as initials (or a 404).
        if not fallback:
            raise NotFound() from None
        return _respond(request, handling, await service.initials_only(
            subject, size, formats, transient=exc.transient, admit=admit), formats)
    except RefusedPerson:
        if not handling.sites.foreign(request.headers):
            raise  # a 404: in-network callers may learn the operator's rules apply
        # Another website must not tell a refused person (a guest) from nobody: initials
        # from the name it asked for, like anyone Graph does not know.
        return _respond(request, handling, await service.initials_only(
            subject, size, formats, transient=True, admit=admit), formats)
    return _respond(request, handling, result, formats)


async def hash_avatar(request: web.Request) -> web.StreamResponse:
    """A Gravatar or Libravatar URL (``gravatar``, ``hashavatars``): the person whose
    address hashes to it, or a default drawn from the hash."""
    handling = request.app[HANDLING]
    # Never reached with signing on (the configuration refuses the pair): one rule anyway.
    handling.policy.check_signature(request.path, request.query.get("sig"))
    ask = parse_hash_request(request.match_info["hash"], request.query, handling.max_size)
    formats = choose(ask.format, request.headers.get("Accept", ""), ask.size,
                     handling.default_format)
    hashes = handling.hashes
    assert hashes is not None  # the route exists only with directory.gravatar
    try:
        result = await hashes.answer(ask, formats, _admit(request, handling),
                                     foreign=handling.sites.foreign(request.headers))
    except NotFound:
        raise
    except Exception as exc:  # as for a UPN: still a picture, never a 5xx
        log.error("answering a hash with the default tile after an unexpected %s",
                  type(exc).__name__, exc_info=exc)
        metrics.initials_fallback("internal")
        result = hashes.limited(ask, "mp", "error")
    return _respond(request, handling, result, formats)


def _admit(request: web.Request, handling: Handling) -> Admit:
    """Asked only when the request would cost Graph calls or renders: ``cost`` of them."""
    async def admit(cost: int) -> bool:
        client = handling.clients.of(request.remote,
                                     request.headers.getall("X-Forwarded-For", []))
        return await handling.limiter.allow(client, cost)
    return admit


def _respond(request: web.Request, handling: Handling, result: Avatar,
             formats: OutputFormats) -> web.Response:
    server, sites, asked = handling.server, handling.sites, request.headers
    cors = server.cors_origins
    headers = answer_headers(
        result.content_type, result.etag, result.source, result.max_age,
        result.stale_while_revalidate, result.stand_in, server.cross_origin_resource_policy,
        bool(cors), allowed_origin(cors, asked.get("Origin")) if cors else None,
        formats.varies, sites.varies)
    if not result.no_store and sites.cross_site(asked):
        private = CIMultiDict(headers)
        private["Cache-Control"] = sites.cache_control(asked, headers["Cache-Control"])
        headers = CIMultiDictProxy(private)
    conditional = asked.getall("If-None-Match", ())
    if conditional and none_match(conditional, result.etag):
        unchanged = CIMultiDict(headers)
        unchanged.popall("Content-Type")
        return web.Response(status=304, headers=unchanged)
    return web.Response(body=result.body, headers=headers)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: a script's fetch with a header such as ``If-None-Match``
    asks first. No signature, cache or Graph: the answer depends on the origin only."""
    headers = CIMultiDict(cors_headers(request.app[HANDLING].server.cors_origins,
                                       request.headers.get("Origin")))
    if "Access-Control-Allow-Origin" in headers:
        headers["Access-Control-Allow-Methods"] = "GET, HEAD"
        headers["Access-Control-Allow-Headers"] = PREFLIGHT_HEADERS
        headers["Access-Control-Max-Age"] = "7200"  # Chromium's cap; Firefox allows more
    headers["Allow"] = "GET, HEAD, OPTIONS"
    return web.Response(status=204, headers=headers)


_UNPARSEABLE = ((LineTooLong, "request line or header too long"),
                (BadHttpMethod, "bad method"), (InvalidURLError, "bad request target"))
_aiohttp_handle_error = RequestHandler.handle_error  # aiohttp's own, for what we pass on


def take_over_aiohttp_answers() -> None:
    """Make the answers aiohttp sends by itself ours. aiohttp answers a request it
    cannot parse (bad method, 8 KB lines) before any handler or signal runs, so
    no per-application hook reaches them: this patches aiohttp for every server
    in the process. Their ``Server`` header says ``avatarproxy``, not aiohttp's
    and Python's versions, and the answer is ``_unparseable``'s. Idempotent; the
    composition root calls it when it builds the app (``app.create_app``), not on
    import."""
    setattr(web_response, "SERVER_SOFTWARE", "avatarproxy")  # noqa: B010
    setattr(RequestHandler, "handle_error", _unparseable)  # noqa: B010


def _unparseable(self: RequestHandler, request: BaseRequest, status: int = 500,
                 exc: BaseException | None = None, message: str | None = None
                 ) -> web.StreamResponse:
    """aiohttp's answer to a request it cannot parse (no handler, middleware or
    signal runs for it), made ours. aiohttp's own echoed the start of the
    offending line (a path names a person) and logged each one at ERROR with a
    traceback: a client could flood the log by the line. Now: a short
    ``text/plain`` with our headers, and a rate-limited INFO line. Anything else
    (a handler's unexpected exception, a 500) is left to aiohttp."""
    if not isinstance(exc, HttpProcessingError) or status >= 500:
        return _aiohttp_handle_error(self, request, status, exc, message)
    reason = next((text for kind, text in _UNPARSEABLE if isinstance(exc, kind)), "bad request")
    logs.client_error(f"{status} {reason} ({type(exc).__name__})")
    if logs.wants_access_line():
        logs.access("unparseable", "-", status, 0.0, None, "none", reason)
    if request.writer.output_size > 0:  # as aiohttp: nothing more can be sent
        raise ConnectionError("response already started, cannot answer the parse error")
    response = _plain(status, reason)
    response.headers.update({"X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer"})
    response.force_close()
    return response


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response: no MIME sniffing, no Referer leaking intranet URLs, no banner."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.popall("Server", None)


def add_hash_route(app: web.Application) -> None:
    """``/avatar/<md5 or sha256>[.png|.jpg]`` (``directory.gravatar``): one segment after
    ``/avatar/``, where a person's route has two and a group's or team's three."""
    path = "/avatar/{hash:" + ROUTE_PATTERN + "}"
    app.router.add_get(path, hash_avatar)
    app.router.add_route("OPTIONS", path, preflight)


def add_routes(app: web.Application) -> None:
    # {subject} excludes "/" (aiohttp's default); percent-escapes are decoded,
    # so a guest's %23EXT%23 arrives as #EXT#.
    # Group and team routes have three segments, contacts four: never confused
    # with the user route.
    for path, handler in (("/avatar/{subject}/{size}", avatar),
                          ("/avatar/group/{id}/{size}", group_avatar),
                          ("/avatar/team/{id}/{size}", team_avatar),
                          ("/avatar/contact/{mailbox}/{contact}/{size}", contact_avatar)):
        app.router.add_get(path, handler)
        app.router.add_route("OPTIONS", path, preflight)
