"""Log lines name people only when ``logging.log_upn`` says so: one helper
(``logs.subject_ref``) decides for the service, the throttle, the web layer,
the blocked list and warm. (conftest holds every test's lines to the same.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from appclient import MakeClient, get
from logwatch import Lines

from avatarproxy import logs
from avatarproxy.config import load_settings
from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import portrait
from avatarproxy.logs import LoggingSettings
from avatarproxy.models import Subject
from avatarproxy.security import sign_url
from avatarproxy.warm import Pacer, WarmStats, listed, open_warmer

SHOWN = ("adele.vance@contoso.com", "diego.siciliani@contoso.com", "alex.wilber@contoso.com",
         "megan.bowen@contoso.com", "lee.gu@contoso.com", "pradeep@contoso.com")


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Every line of ours down to DEBUG, access lines for every request, names hidden."""
    collected = Lines()
    ours, root = logging.getLogger("avatarproxy"), logging.getLogger()
    saved_level, saved_settings = ours.level, logs._settings
    ours.setLevel(logging.DEBUG)
    root.addHandler(collected)
    logs.adopt(LoggingSettings(format="json", level="debug", access=1.0, log_upn=False))
    try:
        yield collected
    finally:
        root.removeHandler(collected)
        ours.setLevel(saved_level)
        logs.adopt(saved_settings)


async def test_no_line_names_a_person_while_log_upn_is_off(
        make_client: MakeClient, fake_graph: Any, idp_settings: dict[str, Any],
        redis_url: str, lines: Lines) -> None:
    graph = fake_graph.graph
    graph.add(FakePerson("pradeep.gupta@contoso.onmicrosoft.com",
                         "6d5c4b3a-2918-4776-8554-433221100fed", "Pradeep Gupta",
                         photo=portrait(96, 96, "#222", "#999", "#c96"),
                         proxy_addresses=("smtp:pradeep@contoso.com",)))
    graph.inject(429, headers={"Retry-After": "30"}, path_contains="alex.wilber")  # throttled
    graph.inject(503, path_contains="megan.bowen")  # failing
    graph.fault("slow", path_contains="lee.gu", delay=2.0)  # past the deadline
    client = await make_client(server__request_deadline_seconds=0.5, graph__max_retries=0)
    for name in SHOWN:  # photo, initials, throttled, failure, deadline, an address
        assert (await get(client, f"/avatar/{name}/48"))[0] == 200
    # The blocked list cannot be resolved.
    graph.inject(503, times=10, path_contains="mail,proxyAddresses")
    await make_client(security__blocked=["isaiah.langer@contoso.com"], graph__max_retries=0)
    # warm, with a photo it cannot fetch.
    graph.fault("corrupt", times=10, path_contains="lynne.robbins@contoso.com/photos/48x48/$value")
    settings = load_settings(env={}, overrides={**idp_settings, "cache.redis_url": redis_url})
    async with open_warmer(settings, (48,), Pacer(1000), formats=("jpeg",)) as warmer:
        stats = await warmer.run(listed([Subject("lynne.robbins@contoso.com")]), WarmStats())
    assert stats.failed == 1

    texts = [text for _, text, _ in lines.lines]
    for expected in ("Graph throttled mailbox:sha256:", "with uncached initials",
                     "metadata failed", "security.blocked: 1 of 1", "warm: sha256:"):
        assert any(expected in text for text in texts), expected
    access = [record for record, _, _ in lines.lines if record.name == "avatarproxy.access"]
    assert len(access) == len(SHOWN)
    assert all(getattr(record, "subject", "").startswith("sha256:") for record in access)
    assert lines.naming_people() == []


@pytest.fixture
def client_errors(monkeypatch: pytest.MonkeyPatch) -> logs.ClientErrors:
    """A fresh client-error reporter; its interval does not end during a test (the
    test ends it with ``flush``, what its timer does), so a loaded machine's pace
    cannot split the counts."""
    reporter = logs.ClientErrors(interval=3600)
    monkeypatch.setattr(logs, "CLIENT_ERRORS", reporter)
    return reporter


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await reader.read()
    finally:
        writer.close()


def _summary(lines: Lines, reporter: logs.ClientErrors) -> str:
    """The client-error summary line the end of the interval writes."""
    reporter.flush()
    found = [text for record, text, _ in lines.lines
             if record.name == "avatarproxy.client" and "client errors in" in text]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("log_upn", [False, True])
async def test_a_flood_of_requests_aiohttp_cannot_parse_costs_two_info_lines(
        make_client: MakeClient, lines: Lines, client_errors: logs.ClientErrors,
        log_upn: bool) -> None:
    # Each used to be an ERROR line (with a traceback under log_upn), and the
    # 400 echoed the start of the line: a path that names a person.
    logs.adopt(replace(logs._settings, log_upn=log_upn))
    client = await make_client()
    assert client.port is not None
    too_long = b"GET /avatar/" + b"a" * 9000 + b"@contoso.com/48 HTTP/1.1\r\n"
    non_ascii = b"GET /avatar/adele.vance@contoso.com/\xd9\xa4 HTTP/1.1\r\n"
    for n in range(40):
        raw = await _raw(client.port, (non_ascii if n % 4 == 0 else too_long)
                         + b"Host: x\r\nConnection: close\r\n\r\n")
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 400 "), raw[:200]
        assert body in (b"request line or header too long\n", b"bad request target\n"), body
        fields = head.decode().lower()
        assert "content-type: text/plain" in fields and "x-content-type-options: nosniff" in fields
    summary = _summary(lines, client_errors)
    assert "39 more" in summary and "(LineTooLong): 30" in summary, summary
    ours = [(r, text) for r, text, _ in lines.lines
            if r.name in ("aiohttp.server", "avatarproxy.client")]
    assert len(ours) == 2, ours  # the first one, then the interval's summary
    assert all(r.levelno <= logging.INFO and not r.exc_info for r, _ in ours)
    assert not any("aaaa" in text or "adele" in text for _, text in ours)


async def test_client_mistakes_are_logged_at_info_once_then_summed_up(
        make_client: MakeClient, lines: Lines, client_errors: logs.ClientErrors) -> None:
    key = "k" * 32
    client = await make_client(security__url_signing_keys=[key])
    for path, method, status in ((sign_url(key, "/avatar/not-a-upn/48"), "GET", 400),
                                 ("/avatar/adele.vance@contoso.com/48?sig=" + "A" * 43, "GET", 403),
                                 ("/avatar/adele.vance@contoso.com/48", "POST", 405),
                                 ("/wp-login.php", "GET", 404)):
        for _ in range(5):
            assert (await get(client, path, method))[0] == status
    summary = _summary(lines, client_errors)
    texts = [text for r, text, _ in lines.lines if r.name == "avatarproxy.client"]
    assert texts[0].startswith("client error: 400 not a valid userPrincipalName or object id")
    assert "19 more" in summary
    for kind in ("400 not a valid userPrincipalName or object id: 4", "403 bad signature: 5",
                 "405 Method Not Allowed: 5", "404 Not Found: 5"):
        assert kind in summary, summary
    assert all(r.levelno == logging.INFO and not r.exc_info
               for r, _, _ in lines.lines if r.name == "avatarproxy.client")


async def test_the_summary_comes_when_the_interval_ends_and_only_while_mistakes_come(
        lines: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    reporter = logs.ClientErrors(interval=0.2)
    ended: asyncio.Queue[None] = asyncio.Queue()  # each end of an interval (its timer)
    flush = reporter.flush

    def end_of_interval() -> None:
        flush()
        ended.put_nowait(None)

    monkeypatch.setattr(reporter, "flush", end_of_interval)
    for _ in range(3):  # no await between: all three land in the first interval
        reporter.note("400 bad method")

    def client_lines() -> list[str]:
        return [text for r, text, _ in lines.lines if r.name == "avatarproxy.client"]

    await asyncio.wait_for(ended.get(), timeout=30)  # the loop's timer, on a loaded machine
    assert client_lines()[1:] == ["client errors in the last 0.2 s: 2 more (400 bad method: 2)"]
    await asyncio.wait_for(ended.get(), timeout=30)  # a quiet interval: no line, window shut
    assert len(client_lines()) == 2 and not reporter.counting
    reporter.note("400 bad method")  # after the quiet: reported at once again
    assert client_lines()[2].startswith("client error: 400 bad method")
    flush()


async def test_refused_requests_log_their_reason_in_the_access_line(
        make_client: MakeClient, lines: Lines) -> None:
    client = await make_client()
    assert (await get(client, "/avatar/not-a-upn/48"))[0] == 400
    assert (await get(client, "/avatar/adele.vance@contoso.com/0"))[0] == 400
    access = [(r, text) for r, text, _ in lines.lines if r.name == "avatarproxy.access"]
    assert [getattr(r, "reason", None) for r, _ in access] == [
        "not a valid userPrincipalName or object id", "size must be between 1 and 1024"]
    assert access[0][1].startswith(
        "GET /avatar/{subject}/{size} 400: not a valid userPrincipalName or object id")


async def test_with_log_upn_on_the_same_lines_name_the_person(
        make_client: MakeClient, fake_graph: Any, lines: Lines) -> None:
    logs.adopt(replace(logs._settings, log_upn=True))
    fake_graph.graph.inject(429, headers={"Retry-After": "30"}, path_contains="alex.wilber")
    client = await make_client(graph__max_retries=0)
    assert (await get(client, "/avatar/alex.wilber@contoso.com/48"))[0] == 200
    texts = [text for _, text, _ in lines.lines]
    assert "Graph throttled mailbox:alex.wilber@contoso.com: pausing its calls for 30 s" in texts
    assert [getattr(r, "subject", "") for r, _, _ in lines.lines
            if r.name == "avatarproxy.access"] == ["alex.wilber@contoso.com"]
