"""Answers past the load caps: cheap, never waiting on the image pool, exactly the
size asked, and every error the service can raise reaching the browser as its
status or as initials, never a 5xx."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
from appclient import Client, MakeClient, get
from PIL import Image, ImageChops

from avatarproxy import errors
from avatarproxy.errors import AvatarProxyError, BadRequest, Forbidden, NotFound
from avatarproxy.initials import InitialsRenderer
from avatarproxy.service import AvatarService
from avatarproxy.web import HANDLING

ADELE = "adele.vance@contoso.com"
MEGAN = "megan.bowen@contoso.com"
# What the browser gets for each error type: its status, or initials not to be stored.
CLIENT_MISTAKES = {BadRequest: 400, Forbidden: 403, NotFound: 404}


def service(client: Client) -> AvatarService:
    return client.app[HANDLING].service


@asynccontextmanager
async def busy_pool(svc: AvatarService) -> AsyncIterator[None]:
    """Every image job slot taken (``server.max_queued_images``) by work that lasts
    until released, the first of it holding the fonts' lock, as a pool thread does
    while it draws initials: the pool as a burst of large renders leaves it."""
    release, drawing = threading.Event(), threading.Event()

    def draw() -> None:
        with svc._initials._lock:
            drawing.set()
            release.wait(20)

    def work() -> None:
        release.wait(20)

    slots = svc._limits._max_queued
    jobs = [asyncio.ensure_future(svc._pool.run(work if n else draw)) for n in range(slots)]
    deadline = time.monotonic() + 10
    while not (drawing.is_set() and svc._limits.queued_images == slots):
        assert time.monotonic() < deadline, "the pool did not fill"
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        release.set()
        await asyncio.gather(*jobs)


async def worst_loop_lag(stop: asyncio.Event) -> float:
    """The longest the event loop went without running this task, until ``stop``."""
    worst, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


def png_side(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "PNG"
        return image.size


async def test_overload_answers_never_wait_on_a_saturated_image_pool(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(server__max_queued_images=3)
    people = [quote(p.upn) for p in fake_graph.graph.people][:12]  # with and without photos
    sizes = (32, 48, 97, 333, 1024)
    async with busy_pool(service(client)):
        stop = asyncio.Event()
        meter = asyncio.ensure_future(worst_loop_lag(stop))
        began = time.monotonic()
        answers = await asyncio.gather(*(get(client, f"/avatar/{upn}/{size}")
                                         for upn in people for size in sizes))
        took = time.monotonic() - began
        stop.set()
        lag = await meter
    for (status, headers, body), size in zip(answers, sizes * len(people), strict=True):
        assert status == 200, body
        assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
            200, "initials", "no-store")
        assert headers["X-Avatar-Stand-In"] == "overload"  # for a cache in front
        assert png_side(body) == (size, size)  # the size asked, as promised
    # Measured on the 2-core machine: 0.6-1.3 s for the 60 answers, the loop's worst
    # stall 0.1-0.2 s (the requests themselves). Drawn with the pool's fonts, the
    # first answer waited for the pool's lock, and the whole loop with it: 20 s here.
    assert lag < 2.0, f"the event loop stalled {lag:.2f} s ({took:.2f} s for 60 answers)"
    assert took < 10.0
    # Once the pool is free, the same people get their real avatars again.
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert (status, headers["X-Avatar-Source"]) == (200, "photo")


async def test_blocked_and_rate_limited_people_get_initials_not_a_500_when_the_pool_is_full(
        make_client: MakeClient) -> None:
    client = await make_client(server__max_queued_images=1, security__blocked=[MEGAN],
                               security__rate_limit_per_second=0.001,
                               security__rate_limit_burst=1)
    async with busy_pool(service(client)):
        # Blocked: initials without Graph. Adele: her metadata takes the one miss
        # allowed, her photo would be a second: rate-limited, initials instead.
        for path in (f"/avatar/{MEGAN}/77", f"/avatar/{ADELE}/77"):
            status, headers, body = await get(client, path)
            assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
                200, "initials", "no-store"), path
            assert png_side(body) == (77, 77)


def every_error_type() -> list[type[AvatarProxyError]]:
    found, todo = [], [AvatarProxyError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


def an_instance(kind: type[AvatarProxyError]) -> AvatarProxyError:
    if issubclass(kind, errors.GraphPermissionDenied):
        return kind("denied", "ProfilePhoto.Read.All")
    if issubclass(kind, errors.ConfigError):
        return kind(["a problem"])
    return kind("a failure")


@pytest.mark.parametrize("kind", every_error_type(), ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("step", ["fetch_avatar", "initials_only"])
async def test_every_error_the_service_raises_reaches_the_browser_as_a_status_or_initials(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, kind: type[AvatarProxyError],
        step: str) -> None:
    client = await make_client(security__blocked=[MEGAN])  # initials_only serves Megan

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise an_instance(kind)

    monkeypatch.setattr(service(client), step, fail)
    who = ADELE if step == "fetch_avatar" else MEGAN
    status, headers, body = await get(client, f"/avatar/{who}/64")
    expected = next((s for k, s in CLIENT_MISTAKES.items() if issubclass(kind, k)), None)
    if expected is not None:
        assert (status, headers["Content-Type"]) == (expected, "text/plain; charset=utf-8")
        assert headers["Cache-Control"] == "no-store"
    elif issubclass(kind, errors.Blocked):  # the policy's answer: initials, never the photo
        assert (status, headers["X-Avatar-Source"]) == (200, "initials")
        assert png_side(body) == (64, 64)
    else:  # a dependency, a load cap, a limit: a picture for this moment
        assert (status, headers["X-Avatar-Source"], headers["Cache-Control"]) == (
            200, "initials", "no-store")
        assert headers["X-Avatar-Stand-In"] == (
            "rate-limited" if issubclass(kind, errors.RateLimited) else "error")
        assert png_side(body) == (64, 64)


def test_quick_initials_look_exactly_like_the_usual_ones() -> None:
    renderer = InitialsRenderer()
    quick = renderer.twin()
    for texts in (["AV"], ["ЖЯ"], ["שמ"], ["W"], [""]):
        for size in (1, 48, 333):
            usual = Image.open(io.BytesIO(renderer.render(texts, (10, 80, 160), size, "png")))
            fast = Image.open(io.BytesIO(quick.render_quick(texts, (10, 80, 160), size)))
            assert fast.size == (size, size)
            difference = ImageChops.difference(usual.convert("RGB"), fast.convert("RGB"))
            assert max(high for _, high in difference.getextrema()) <= 1, (texts, size)
