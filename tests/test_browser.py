"""The demo page in a real headless Chromium (Debian's chromium + chromedriver).

Loads ``GET /`` of the demo app, checks every ``<img>`` decoded at the size
it asked for with the source its caption names, reads the browser's own
network events (the DevTools performance log) to see that a reload is
served from the browser cache or revalidated with 304, and saves a
screenshot to ``tests/artifacts/demo-page.png`` (git-ignored). Then the same
page through the caching front (tests/front.py), in two browsers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from front import start_front
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from avatarproxy.demo.contoso import demo_people
from avatarproxy.demo.serve import demo_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"
DPR = 2  # a high-DPI screen, so srcset picks its 2x candidate
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--disable-dev-shm-usage", f"--force-device-scale-factor={DPR}",
         "--window-size=1100,900")

IMAGES_JS = """return Array.from(document.images).map(i => ({
    upn: i.dataset.upn, size: +i.dataset.size, source: i.dataset.source,
    srcset: 'srcset' in i.dataset, svg: 'svg' in i.dataset, complete: i.complete,
    gravatar: 'gravatar' in i.dataset,
    width: i.naturalWidth,
    height: i.naturalHeight, url: i.currentSrc,
    caption: i.nextElementSibling.textContent}))"""


@dataclass
class Fetch:
    """One request as the browser's network events tell it."""

    url: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False


@dataclass
class Visit:
    images: list[dict[str, Any]]
    first: list[Fetch]
    reload: list[Fetch]


def _network(driver: webdriver.Chrome) -> list[Fetch]:
    """Avatar requests since the last call, from Network.* DevTools events."""
    fetches: dict[str, Fetch] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        method, request_id = message.get("method"), params.get("requestId", "")
        if method == "Network.requestWillBeSent" and "/avatar/" in params["request"]["url"]:
            fetches[request_id] = Fetch(params["request"]["url"])
        elif request_id not in fetches:
            continue
        elif method == "Network.requestServedFromCache":
            fetches[request_id].from_cache = True
        elif method == "Network.responseReceived":
            response = params["response"]
            fetch = fetches[request_id]
            fetch.status = response["status"]
            fetch.headers = {k.lower(): v for k, v in response["headers"].items()}
            fetch.from_cache |= bool(response.get("fromDiskCache"))
    return list(fetches.values())


def chromium(profile: Path, flags: tuple[str, ...] = FLAGS) -> webdriver.Chrome:
    """Debian's headless Chromium with a fresh profile, logging network events."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            pytest.fail(f"{binary} missing: apt-get install chromium chromium-driver "
                        "(tests/run does)", pytrace=False)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _visit(url: str, profile: Path, screenshot: Path | None) -> Visit:
    driver = chromium(profile)
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)  # returns after the load event: every <img> has settled
        images = driver.execute_script(IMAGES_JS)
        first = _network(driver)
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1100, int(height) + 40)
            driver.save_screenshot(str(screenshot))
        driver.refresh()
        assert driver.execute_script(IMAGES_JS) == images
        return Visit(images, first, _network(driver))
    finally:
        driver.quit()


async def _load_demo_page(aiohttp_server: Any, tmp_path: Path, overrides: dict[str, Any],
                          screenshot: Path | None = None) -> Visit:
    # The port is only printed; the test server picks a free one.
    server = await aiohttp_server(await demo_app("127.0.0.1", 8080, overrides))
    url = str(server.make_url("/"))
    return await asyncio.to_thread(_visit, url, tmp_path / "chromium", screenshot)


async def test_demo_page_in_chromium_shows_every_avatar_and_reload_uses_the_cache(
        aiohttp_server: Any, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo-page.png"
    screenshot.unlink(missing_ok=True)
    visit = await _load_demo_page(aiohttp_server, tmp_path, {}, screenshot)

    people = {p.upn: p for p in demo_people()}
    assert len(visit.images) == len(people) * 7  # six columns, and one Gravatar URL
    assert sum(image["gravatar"] for image in visit.images) == len(people)
    for image in visit.images:
        assert image["upn"] in people
        assert image["complete"] and image["caption"] == image["source"], image
        if image["srcset"]:
            # The 2x candidate was chosen; its size is reported density-corrected.
            assert image["url"].endswith(f"/{image['size'] * DPR}"), image
        # The size asked, photo (scaled up when smaller) or initials alike.
        assert (image["width"], image["height"]) == (image["size"], image["size"]), image
    assert {i["source"] for i in visit.images} == {"photo", "initials"}

    # First visit: each avatar came over the network, from the source its caption names,
    # in a modern format because Chromium's Accept lists AVIF and WebP.
    source_of = {i["url"]: i["source"] for i in visit.images}
    svg = {i["url"] for i in visit.images if i["svg"] and i["source"] == "initials"}
    assert svg
    assert {f.url for f in visit.first} == set(source_of)
    for fetch in visit.first:
        assert fetch.status == 200 and not fetch.from_cache, fetch
        assert fetch.headers["x-avatar-source"] == source_of[fetch.url], fetch
        modern = ("image/svg+xml",) if fetch.url in svg else ("image/avif", "image/webp")
        assert fetch.headers["content-type"] in modern, fetch
        assert fetch.headers["vary"] == "Accept, Sec-Fetch-Site"
    # Reload: nothing is downloaded again; fresh avatars come from the browser cache.
    assert visit.reload, "no network events on reload"
    assert all(f.from_cache or f.status == 304 for f in visit.reload), visit.reload
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_expired_avatars_are_revalidated_with_304_on_reload(
        aiohttp_server: Any, tmp_path: Path) -> None:
    visit = await _load_demo_page(aiohttp_server, tmp_path, {
        "cache.browser_max_age": 0, "cache.initials_max_age": 0,
        "cache.stale_while_revalidate": 0})
    assert {f.status for f in visit.first} == {200}
    revalidated = {f.url for f in visit.reload if f.status == 304}
    assert revalidated == {i["url"] for i in visit.images}
    assert all(f.status == 304 for f in visit.reload), visit.reload


async def test_the_demo_page_through_the_caching_front(aiohttp_server: Any,
                                                      tmp_path: Path) -> None:
    # The front as deployed (tests/front.py) before the demo: Chromium's own
    # Accept and Vary handling against it. A second browser, with an empty
    # cache of its own, gets every avatar from the front's copies.
    app = await demo_app("127.0.0.1", 8080, {})
    reached: list[str] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith("/avatar/"):
            reached.append(request.path_qs)

    app.on_response_prepare.append(record)
    server = await aiohttp_server(app)
    front = await asyncio.to_thread(start_front, tmp_path / "front", server.port)
    try:
        first = await asyncio.to_thread(_visit, front.base_url + "/", tmp_path / "one", None)
        asked = list(reached)
        second = await asyncio.to_thread(_visit, front.base_url + "/", tmp_path / "two", None)
    finally:
        await asyncio.to_thread(front.stop)
    source_of = {i["url"]: i["source"] for i in first.images}
    assert all(i["complete"] and i["caption"] == i["source"] for i in first.images)
    assert sorted(asked) == sorted({u.split(front.base_url, 1)[1] for u in source_of})
    assert reached == asked, "the second browser's avatars reached the service"
    assert {i["url"]: i["source"] for i in second.images} == source_of
    for fetch in second.first:
        assert fetch.status == 200 and not fetch.from_cache, fetch  # from the front
        assert fetch.headers["x-avatar-source"] == source_of[fetch.url], fetch
        assert "accept" in fetch.headers["vary"].lower(), fetch
        assert fetch.headers["content-type"] in ("image/avif", "image/webp", "image/svg+xml")
    assert all(f.from_cache or f.status == 304 for f in second.reload), second.reload
