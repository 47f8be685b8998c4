"""The front's format classes against negotiation.py, over real browsers' headers.

The front (deploy/kubernetes/base/front/avatarproxy.vcl, ``canonical_accept``)
replaces ``Accept`` with one canonical value per class before the cache
lookup and before the service sees it. That is a second reading of ``Accept``
beside negotiation.py's: this test runs the real front over every header in
tests/browser_accepts.py and checks that the service would choose the same
formats (photo and initials, small and large, SVG asked or not) for the value
the front sent as for the browser's own header. A rule changed on either side
shows here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from browser_accepts import REAL, corpus
from front import start_front

from avatarproxy.negotiation import AVIF_MIN_SIZE, accepted, choose

CANONICAL = {"image/avif,image/webp,*/*", "image/avif,*/*", "image/webp,*/*", "*/*"}


async def echo(request: web.Request) -> web.Response:
    # Never cacheable: every request reaches it and reports what it was sent.
    return web.Response(headers={"X-Seen-Accept": request.headers.get("Accept", "(none)"),
                                 "Cache-Control": "no-store"})


def same_choice(browser: str, sent: str) -> bool:
    return all(choose(forced, browser, size, "jpeg") == choose(forced, sent, size, "jpeg")
               for forced in (None, "svg") for size in (48, AVIF_MIN_SIZE))


def test_the_canonical_values_are_one_per_class() -> None:
    assert len({frozenset(accepted(value)) for value in CANONICAL}) == 4


async def test_the_front_classifies_accept_headers_as_the_service_does(
        aiohttp_server: Any, tmp_path: Path) -> None:
    headers = corpus()
    assert len(REAL) >= 35 and len(headers) >= 500
    app = web.Application()
    app.router.add_get("/avatar/{tail:.*}", echo)
    server = await aiohttp_server(app)
    front = await asyncio.to_thread(start_front, tmp_path / "front", server.port)
    limit = asyncio.Semaphore(16)
    try:
        async with aiohttp.ClientSession(skip_auto_headers=("Accept",)) as http:
            async def sent_for(accept: str | None) -> str:
                async with limit, http.get(f"{front.base_url}/avatar/x/48", headers=(
                        {} if accept is None else {"Accept": accept})) as resp:
                    assert resp.status == 200
                    return resp.headers["X-Seen-Accept"]

            sent = await asyncio.gather(*(sent_for(h) for h in headers))
            without = await sent_for(None)  # no Accept at all: Go's client, some bots
    finally:
        await asyncio.to_thread(front.stop)
    assert without == "*/*"
    assert set(sent) <= CANONICAL, set(sent) - CANONICAL
    wrong = [(browser, front_sent) for browser, front_sent in zip(headers, sent, strict=True)
             if not same_choice(browser, front_sent)]
    assert not wrong, "\n".join(f"{b!r}: the front sent {s!r}" for b, s in wrong[:20])
    # The classes real browsers fall in: all four are exercised.
    assert set(sent) == CANONICAL
