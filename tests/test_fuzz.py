"""Thousands of generated requests, written as raw bytes to the running service
(so nothing between us and its HTTP parser tidies them up), against the fake
Graph and a real Redis. Whatever arrives: no 5xx, an answer in bounded time,
and every request Graph receives is one of the allowed forms. Once as the
service starts by default, once with the contacts route on (and so signed
URLs: most generated requests then carry the signature of their own path)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from graphpaths import is_allowed
from yarl import URL

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.demo.contoso import CONTACTS_MAILBOX, demo_contacts
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.security import signature

REQUESTS = 2000
PER_REQUEST_SECONDS = 10.0  # generous: a hang, not a slow render, is what this catches
TOTAL_SECONDS = 60.0

_SUBJECT_PARTS = [
    "adele.vance", "alex.wilber", "$admin", "o'brien", "john_fabrikam.com#EXT#", "..", ".",
    "%2e%2e", "%2F", "%23", "%25", "%00", "%0d%0a", "%C3%A9", "%E2%80%AE", "é", "$", "'", "''",
    "(", ")", "*", "~", "^", "!", "?", "&", "=", "+", ";", ",", "{", "}", "\\", "%", "%%",
    "users", "photo", "$value", "$batch", "$select=id", "groups", "x" * 70, "%41",
]
_DOMAINS = ["@contoso.com", "@contoso.onmicrosoft.com", "@fabrikam.com", "@", "@@", "",
            "@contoso", "@a.b.c.d.e.f", "@" + "d" * 70 + ".com", "@xn--bcher-kva.example"]
_SIZES = ["48", "96", "648", "1024", "1025", "0", "-1", "48x48", "48x64", "48X48", "4.5",
          "1e3", "0048", "99999999999999999999", "", "%34%38", "٤٨", "48%00", "48/photo",
          "48?", "..", "$value"]
_QUERIES = ["", "fallback=404", "fallback=initials", "fallback=mp", "fallback=404&fallback=404",
            "v=1", "_=1700000000", "sig=", "sig=" + "A" * 43, "sig=%00", "$select=id",
            "$filter=x", "a=%ZZ", "&&&", "=", "fallback", "fallback=%34%30%34", "x=" + "y" * 3000,
            "sig=" + "-" * 44]
_HEADERS = [
    "X-Forwarded-For: 1.2.3.4", "X-Forwarded-For: garbage, ::1", "X-Forwarded-For: " + "9," * 500,
    "If-None-Match: *", 'If-None-Match: "abc"', "Range: bytes=0-10", "Accept: text/html",
    "Accept: image/webp,*/*", "Accept-Encoding: gzip", "Cookie: a=b", "Referer: http://x/",
    "Authorization: Bearer stolen", "Host: evil.example", "Transfer-Encoding: chunked",
    "Expect: 100-continue", "Origin: http://evil.example", "X-Long: " + "z" * 9000,
    "Content-Type: application/json", "User-Agent: \x01\x02", "Connection: keep-alive",
]
_METHODS = ["GET"] * 12 + ["HEAD"] * 3 + ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
                                          "G\x00T", "get", "CONNECT"]
_OTHER_PATHS = ["/", "/avatar", "/avatar/", "/avatar//48", "/avatar/x", "/%2e%2e/etc/passwd",
                "/avatar/../avatar/adele.vance@contoso.com/48",
                "//avatar/adele.vance@contoso.com/48",
                "/avatar/adele.vance@contoso.com/48/", "/metrics", "*", "http://evil/avatar/a@b.c/48",
                "/avatar/adele.vance@contoso.com/48/extra", "/avatar/%2F/48", "/" + "a" * 9000]


_VALID_SUBJECTS = ["adele.vance@contoso.com", "ALEX.WILBER@contoso.com", "nobody@contoso.com",
                   "john_fabrikam.com%23EXT%23@contoso.onmicrosoft.com", "%24admin@contoso.com"]


def _path(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(_OTHER_PATHS)
    if rng.random() < 0.3:  # well-formed: reach the cache, Graph and the renderers
        subject = rng.choice([*_VALID_SUBJECTS, f"user{rng.randrange(200)}@contoso.com",
                              str(uuid.UUID(int=rng.getrandbits(128)))])
        size = rng.choice(["48", "64", "96", "240", "48x48", str(rng.randrange(1, 700))])
        return f"/avatar/{subject}/{size}"
    subject = "".join(rng.choice(_SUBJECT_PARTS) for _ in range(rng.choice((1, 1, 1, 2, 3))))
    if "#" in subject and rng.random() < 0.7:
        subject = subject.replace("#", "%23")
    return f"/avatar/{subject}{rng.choice(_DOMAINS)}/{rng.choice(_SIZES)}"


KEY = "fuzz-signing-key"
CONTACTS = {"graph.contacts": True, "security.url_signing_keys": [KEY],
            "graph.contact_mailboxes": [CONTACTS_MAILBOX, "$admin@contoso.com",
                                        "john_fabrikam.com#EXT#@contoso.onmicrosoft.com"]}
_MAILBOXES = [CONTACTS_MAILBOX, CONTACTS_MAILBOX.upper(), "%24admin@contoso.com",
              "john_fabrikam.com%23EXT%23@contoso.onmicrosoft.com", "alex.wilber@contoso.com",
              "", "..", "%2F", "contact", "\u212aadele.vance@contoso.com"]
_CONTACT_IDS = [*(c.object_id for c in demo_contacts()), "AAMkADnone=", "", ".", "..",
                "%2E%2E", "%2F", "a%3Fb", "a%23b", "%C3%A9", "A" * 512, "A" * 513, "a b",
                "a=b=", "-_-", "%00", "AAMkAD%2F..%2F..%2Fx", "AA?$select=id"]


def _contact_path(rng: random.Random) -> str:
    mailbox = rng.choice(_MAILBOXES)
    contact = rng.choice(_CONTACT_IDS) if rng.random() < 0.8 else "".join(
        rng.choice(_SUBJECT_PARTS) for _ in range(rng.choice((1, 2))))
    size = rng.choice(["48", "96", str(rng.randrange(1, 700))]) if rng.random() < 0.7 \
        else rng.choice(_SIZES)
    return f"/avatar/contact/{mailbox}/{contact}/{size}"


def _signed(target: str) -> str:
    """``target`` with the signature of the path as the service will read it."""
    try:
        path = URL(target, encoded=True).path
    except ValueError:
        return target
    return target + ("&" if "?" in target else "?") + "sig=" + signature(KEY, path)


def _request(rng: random.Random, port: int, contacts: bool = False) -> bytes:
    target = _contact_path(rng) if contacts and rng.random() < 0.5 else _path(rng)
    query = "&".join(rng.choice(_QUERIES) for _ in range(rng.choice((0, 1, 1, 2))))
    if query:
        target += "?" + query
    if contacts and rng.random() < 0.9:
        target = _signed(target)
    lines = [f"{rng.choice(_METHODS)} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += rng.sample(_HEADERS, rng.choice((0, 0, 1, 2, 3)))
    lines.append("Connection: close")
    # A chunked request ends with its last chunk; one that never does is a
    # slow client for the reverse proxy's timeouts, not a request to answer.
    body = "0\r\n\r\n" if "Transfer-Encoding: chunked" in lines else ""
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")


async def _send(port: int, data: bytes) -> tuple[int, bytes]:
    """The status and header block the service answered; 0 if it closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        status_line = await reader.readline()
        while status_line.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue
            await reader.readline()
            status_line = await reader.readline()
        answer = await reader.read()  # until the server closes: the whole answer arrived
    except ConnectionResetError:
        return 0, b""
    finally:
        writer.close()
    parts = status_line.split()
    head = answer.partition(b"\r\n\r\n")[0].lower()
    return (int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0), head


@pytest.mark.parametrize("contacts", [False, True], ids=["default", "contacts-on"])
async def test_generated_requests_never_cause_5xx_hangs_or_unexpected_graph_calls(
        fake_graph: Any, redis_url: str, contacts: bool) -> None:
    settings = load_settings(env={}, overrides={"graph.base_url": fake_graph.base_url,
                                                "cache.redis_url": redis_url,
                                                **(CONTACTS if contacts else {})})
    server = TestServer(create_app(settings, tokens=StaticTokenProvider("static-token")))
    await server.start_server()
    rng = random.Random(6)  # fixed: a failure can be replayed
    assert server.port is not None
    port = server.port
    requests = [_request(rng, port, contacts) for _ in range(REQUESTS)]
    slots = asyncio.Semaphore(32)
    statuses: dict[int, int] = {}
    failures: list[str] = []

    async def one(data: bytes) -> None:
        async with slots:
            started = time.monotonic()
            try:
                status, head = await asyncio.wait_for(_send(port, data), PER_REQUEST_SECONDS)
            except TimeoutError:
                failures.append(f"no answer in {PER_REQUEST_SECONDS}s: {data[:200]!r}")
                return
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 500 or status == 0:
                failures.append(f"{status} after {time.monotonic() - started:.1f}s: "
                                f"{data[:200]!r}")
            # aiohttp's own 400s for unparseable requests run no signal; they
            # say "server: avatarproxy". Everything else has the headers.
            protocol_error = status == 400 and b"server: avatarproxy" in head
            if b"aiohttp" in head or not (protocol_error or b"nosniff" in head):
                failures.append(f"headers {head!r} for {data[:200]!r}")

    try:
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), TOTAL_SECONDS)
    finally:
        await server.close()
    assert failures == [], "\n".join(failures[:10])
    # The generator reached every layer: rejections, photos and initials alike.
    assert {200, 400, 404, 405} <= set(statuses), statuses
    assert statuses[200] > 100, statuses
    received = [r.raw_path for r in fake_graph.graph.requests]
    assert len(received) > 20
    assert [p for p in received if not is_allowed(p)] == []
    if contacts:  # the contacts route was reached, and only listed mailboxes asked about
        asked = [p for p in received if "/contacts/" in p]
        listed = ("/v1.0/users/adele.vance@contoso.com/contacts/",
                  "/v1.0/users('$admin@contoso.com')/contacts/",
                  "/v1.0/users/john_fabrikam.com%23ext%23@contoso.onmicrosoft.com/contacts/")
        assert asked and all(p.startswith(listed) for p in asked), asked[:5]
