"""What a page on another website learns by embedding avatars, in a real
headless Chromium (as tests/test_browser.py starts it).

The service answers at ``avatars.localhost``; probe pages at ``evil.localhost`` (any
website an employee visits) and ``intranet.localhost`` (the intranet, on another
site) put ``<img>`` elements on it and record what a script can see without
reading a pixel: whether each image loaded and its ``naturalWidth``. Chromium
maps the three names to loopback (``--host-resolver-rules``): three sites, as
browsers draw them, and no network. The responses' caching, which a page could
time on a second load, comes from the browser's own network events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait
from test_browser import FLAGS, chromium

from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.graph.auth import StaticTokenProvider

SITES = ("avatars.localhost", "evil.localhost", "intranet.localhost")
# test_browser's flags, and the three names on IPv4 loopback, where the servers listen.
BROWSER_FLAGS = (*FLAGS, "--host-resolver-rules=" + ",".join(f"MAP {s} 127.0.0.1" for s in SITES))

# name: (person, size, query). The first three ask Gravatar's d=404 question.
PROBES = {
    "photo, 404 asked": ("adele.vance@contoso.com", 48, "?fallback=404"),
    "no photo, 404 asked": ("diego.siciliani@contoso.com", 48, "?fallback=404"),
    "nobody, 404 asked": ("nobody.at.all@contoso.com", 48, "?fallback=404"),
    "240 px photo at 1024": ("alex.wilber@contoso.com", 1024, ""),
    "96 px photo at 648": ("megan.bowen@contoso.com", 648, ""),
    "no photo at 1024": ("dmitry.ivanov@contoso.com", 1024, ""),
}
PERSON_PROBES = set(PROBES)
MALFORMED = "not an address"  # what a page can always tell: a bad URL fails

PAGE = """<!doctype html><meta charset="utf-8"><title>probing</title><script>
const probes = %s;
window.results = {};
let left = Object.keys(probes).length;
for (const [name, url] of Object.entries(probes)) {
  const img = new Image();
  const done = (loaded) => {
    window.results[name] = {loaded, width: img.naturalWidth};
    if (--left === 0) document.title = "done";
  };
  img.onload = () => done(true);
  img.onerror = () => done(false);
  img.src = url;
}
</script>"""


def probe_page(avatars: str, tag: str) -> str:
    urls = {name: f"{avatars}/avatar/{upn}/{size}{query or '?'}&page={tag}"
            for name, (upn, size, query) in PROBES.items()}
    urls[MALFORMED] = f"{avatars}/avatar/not-an-address/48?page={tag}"
    return PAGE % json.dumps(urls)


async def start(aiohttp_server: Any, fake_graph: Any) -> tuple[str, str, str]:
    """The service, with a probe page of its own origin at ``/probe``, listing
    ``intranet.localhost`` in ``server.intranet_origins``; and a server of the other
    sites' pages. Their URLs: the service's base, evil.localhost's and intranet.localhost's page."""
    where: dict[str, str] = {}

    async def other_page(request: web.Request) -> web.Response:
        return web.Response(text=probe_page(where["avatars"], request.host.split(":")[0]),
                            content_type="text/html")

    pages = web.Application()
    pages.router.add_get("/", other_page)
    port = (await aiohttp_server(pages)).port
    app = create_app(load_settings(env={}, overrides={
        "graph.base_url": fake_graph.base_url,
        "server.intranet_origins": [f"http://intranet.localhost:{port}"]}),
        tokens=StaticTokenProvider("t"))

    async def own_page(request: web.Request) -> web.Response:
        return web.Response(text=probe_page(where["avatars"], "own"), content_type="text/html")

    app.router.add_get("/probe", own_page)
    where["avatars"] = f"http://avatars.localhost:{(await aiohttp_server(app)).port}"
    return where["avatars"], f"http://evil.localhost:{port}/", f"http://intranet.localhost:{port}/"


def responses(driver: webdriver.Chrome) -> Iterator[tuple[str, dict[str, str]]]:
    """(URL, headers) of every avatar answer since the last call, from DevTools."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived":
            response = message["params"]["response"]
            if "/avatar/" in response["url"]:
                yield response["url"], {k.lower(): v for k, v in response["headers"].items()}


def visit(pages: list[str], profile: Path) -> dict[str, Any]:
    """Each page's results and its avatar answers' Cache-Control by probe."""
    driver = chromium(profile, BROWSER_FLAGS)
    seen: dict[str, Any] = {}
    try:
        driver.set_page_load_timeout(60)
        for page in pages:
            driver.get(page)
            WebDriverWait(driver, 60).until(lambda d: d.title == "done")
            results = driver.execute_script("return window.results")
            urls = {url: name for name, url in
                    driver.execute_script("return probes").items()}
            caching = {urls[url]: headers for url, headers in responses(driver) if url in urls}
            seen[page] = {"results": results, "headers": caching}
    finally:
        driver.quit()
    return seen


async def test_another_website_cannot_tell_who_exists_or_has_a_photo(
        aiohttp_server: Any, fake_graph: Any, tmp_path: Path) -> None:
    avatars, evil, intranet = await start(aiohttp_server, fake_graph)
    own = f"{avatars}/probe"
    seen = await asyncio.to_thread(visit, [evil, intranet, own], tmp_path / "chromium")

    # Another website: every person's image loads, at the size asked, cached alike.
    results = seen[evil]["results"]
    for name in PERSON_PROBES:
        size = PROBES[name][1]
        assert results[name] == {"loaded": True, "width": size}, (name, results[name])
    caching = {seen[evil]["headers"][name]["cache-control"] for name in PERSON_PROBES}
    assert caching == {"private, max-age=300"}, caching
    # What it can tell: a malformed address fails, as it would anywhere.
    assert results[MALFORMED] == {"loaded": False, "width": 0}

    # The intranet's pages, listed or on the service's own site, keep ?fallback=404
    # (their own placeholder for people without a photo) and the photos' long caching.
    for page in (intranet, own):
        results = seen[page]["results"]
        assert results["photo, 404 asked"] == {"loaded": True, "width": 48}, page
        assert not results["no photo, 404 asked"]["loaded"], page
        assert not results["nobody, 404 asked"]["loaded"], page
        photo = seen[page]["headers"]["240 px photo at 1024"]["cache-control"]
        assert photo.endswith("max-age=3600, stale-while-revalidate=86400"), (page, photo)
    # Cross-site answers never go into a shared cache, which could hand them to another site.
    assert seen[intranet]["headers"]["240 px photo at 1024"]["cache-control"].startswith(
        "private")
    assert seen[own]["headers"]["240 px photo at 1024"]["cache-control"].startswith("public")
    assert "Sec-Fetch-Site" in seen[own]["headers"]["240 px photo at 1024"]["vary"]

