"""Graph's answers as bytes or our exceptions: bodies read within a cap, statuses classified.

A 400 or 404 is ``GraphNotFound``, a 403 ``GraphPermissionDenied`` naming the
permission the app registration lacks, a 401 after a fresh token ``AuthError``,
and anything else (5xx, 429, 410, a gateway's HTML, invalid JSON, an answer over
its cap) ``GraphUnavailable``, with the ``Retry-After`` it carried.

Users delta (``usersdelta``) reads two answers otherwise, because they are Graph
answering about the round, not Graph failing: a 410 is a delta link Graph has
forgotten (``GraphNotFound``: start over), and a page over its cap is
``UnusableAnswer``. Neither is retried or counted by the circuit breaker that
guards avatar traffic.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import (
    AuthError,
    GraphError,
    GraphNotFound,
    GraphPermissionDenied,
    GraphUnavailable,
    InvalidImage,
)

# Longest pause a Retry-After may impose (it is shared by every replica through Redis).
MAX_RETRY_AFTER = 300.0
# What a 403 on each operation means the app registration is missing.
PERMISSIONS = {"metadata": "ProfilePhoto.Read.All", "photo": "ProfilePhoto.Read.All",
               "user": "User.ReadBasic.All",
               "group": "Group.Read.All or GroupMember.Read.All",
               "team": "Team.ReadBasic.All", "team metadata": "Team.ReadBasic.All",
               "team photo": "Team.ReadBasic.All", "batch": "ProfilePhoto.Read.All",
               "list": "User.ReadBasic.All", "list enabled": "User.Read.All",
               "lookup": "User.ReadBasic.All", "users delta": "User.Read.All",
               # Also what RBAC for Applications (or an application access policy)
               # answers for a mailbox outside the scope it gives the app.
               **dict.fromkeys(("contact", "contact metadata", "contact photo"),
                               "Contacts.Read, in scope for the mailbox")}
# Operations whose answer is a photo's bytes.
_PHOTOS = ("photo", "team photo", "contact photo")


# Operations that read 410 and an answer over the cap as above (``usersdelta.OPERATION``).
_ROUND_OPERATIONS = frozenset({"users delta"})


class UnusableAnswer(GraphError):
    """Graph answered, with something we will not use (a page over its cap), and asking
    again would get the same: not an outage, so neither retried nor fed to the breaker."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    oversize: bool = False  # the body went past the limit and was cut


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
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


def check_reply(operation: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Raise our exception for a non-2xx answer (used for ``$batch`` sub-responses)."""
    check(operation, Reply(status, CIMultiDictProxy(CIMultiDict(headers)), body))


def check(operation: str, reply: Reply) -> Reply:
    """``reply`` if it is a usable 2xx answer; else raise the exception that says why not."""
    status = reply.status
    if 200 <= status < 300 and reply.oversize:
        if operation in _PHOTOS:
            raise InvalidImage("photo over the size cap")
        if operation in _ROUND_OPERATIONS:
            raise UnusableAnswer(f"{operation}: Graph answer over the size cap")
        raise GraphUnavailable(f"{operation}: Graph answer over the size cap")
    if 200 <= status < 300:
        return reply
    exc = _failure(operation, reply)
    # Kept out of str(): Graph's message may name the person (log lines must not).
    exc.detail = _error_field(reply, "message", 200)
    exc.code = _error_code(reply)
    raise exc


def json_object(reply: Reply) -> dict[str, Any]:
    """The reply's JSON object; ``GraphUnavailable`` for anything else."""
    try:
        data = json.loads(reply.body)
    except ValueError as exc:
        raise GraphUnavailable("Graph sent invalid JSON") from exc
    if not isinstance(data, dict):
        raise GraphUnavailable("Graph sent unexpected JSON")
    return data


def _failure(operation: str, reply: Reply) -> GraphError:
    status = reply.status
    # Graph answers 400 for a key it cannot parse as a user: nobody to show. Users delta's
    # 410 is a link Graph has forgotten; elsewhere a 410 is no answer about a person.
    if status in (400, 404) or (status == 410 and operation in _ROUND_OPERATIONS):
        return GraphNotFound(f"{operation}: Graph {status} {_error_code(reply)}")
    if status == 403:
        return GraphPermissionDenied(f"{operation}: Graph 403 {_error_code(reply)}",
                                     PERMISSIONS[operation])
    if status == 401:
        return AuthError(f"{operation}: Graph rejected a fresh token: {_error_code(reply)}")
    retry_after = _retry_after(reply.headers.get("Retry-After"), reply.headers.get("Date"))
    return GraphUnavailable(f"{operation}: Graph {status} {_error_code(reply)}", retry_after,
                            reply.headers.get("x-ms-throttle-scope"))


def _error_code(reply: Reply) -> str:
    return _error_field(reply, "code", 80)


def _error_field(reply: Reply, name: str, limit: int) -> str:
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
