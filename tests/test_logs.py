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
from avatarproxy.config import LoggingSettings, load_settings
from avatarproxy.fakegraph import FakePerson, portrait
from avatarproxy.models import Subject
from avatarproxy.warm import RateLimiter, WarmStats, listed, open_warmer

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
    async with open_warmer(settings, (48,), RateLimiter(1000), formats=("jpeg",)) as warmer:
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


async def test_a_request_aiohttp_cannot_parse_is_logged_without_its_path(
        make_client: MakeClient, lines: Lines) -> None:
    client = await make_client()
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:  # a raw non-ASCII byte in the path: aiohttp answers 400 and logs an error
        writer.write(b"GET /avatar/adele.vance@contoso.com/\xd9\xa4 HTTP/1.1\r\n"
                     b"Host: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    finally:
        writer.close()
    errors = [text for record, text, _ in lines.lines if record.name == "aiohttp.server"]
    assert errors and all("InvalidURLError 400" in text for text in errors)
    assert lines.naming_people() == []


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
