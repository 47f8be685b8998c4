"""End to end: real msal against the fake identity provider over TLS, the fake
Graph on loopback, a real Redis, and the service driven over HTTP."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest
from aiohttp import ClientSession, web
from appclient import MakeClient, get
from PIL import Image

from avatarproxy import imaging
from avatarproxy.app import create_app
from avatarproxy.config import load_settings
from avatarproxy.errors import ConfigError

ADELE = "adele.vance@contoso.com"  # 648x648 photo
ALEX = "alex.wilber@contoso.com"  # 240x240 photo


def graph_paths(fake_graph: Any) -> list[str]:
    return [r.path for r in fake_graph.graph.requests]


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


async def test_photo_at_an_hd_size_is_fetched_once_and_served_exactly(
        make_client: MakeClient, fake_graph: Any, fake_idp: Any) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["X-Avatar-Source"] == "photo"
    assert headers["Cache-Control"] == "public, max-age=3600, stale-while-revalidate=86400"
    assert headers["ETag"].startswith('"') and not headers["ETag"].startswith("W/")
    assert int(headers["Content-Length"]) == len(body)
    image = decode(body)
    assert (image.format, image.size) == ("JPEG", (48, 48))
    assert graph_paths(fake_graph) == [f"/v1.0/users/{ADELE}/photo",
                                       f"/v1.0/users/{ADELE}/photos/48x48/$value"]
    assert len(fake_idp.token_requests) == 1
    assert all(r.authorization == f"Bearer {next(iter(fake_idp.issued))}"
               for r in fake_graph.graph.requests)


@pytest.mark.parametrize(("requested", "fetched", "served"), [
    (40, "48x48", 40), (100, "120x120", 100), (240, "240x240", 240), (600, "648x648", 600),
    (1024, "648x648", 1024),  # the largest, scaled up
])
async def test_nearest_hd_size_at_or_above_is_fetched_then_resized(
        make_client: MakeClient, fake_graph: Any, requested: int, fetched: str,
        served: int) -> None:
    client = await make_client()
    status, _, body = await get(client, f"/avatar/{ADELE}/{requested}")
    assert status == 200
    assert decode(body).size == (served, served)
    assert graph_paths(fake_graph)[-1] == f"/v1.0/users/{ADELE}/photos/{fetched}/$value"


async def test_request_above_the_uploaded_size_gets_the_largest_scaled_up(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    _, _, body = await get(client, f"/avatar/{ALEX}/360x360")
    assert decode(body).size == (360, 360)  # as initials would be: no tell-tale size
    assert graph_paths(fake_graph)[-1] == f"/v1.0/users/{ALEX}/photos/240x240/$value"


async def test_entra_only_photo_is_taken_from_the_largest_and_cropped_square(
        make_client: MakeClient, fake_graph: Any) -> None:
    person = fake_graph.find(lambda p: p.photo is not None and p.photo.width != p.photo.height)
    client = await make_client()
    _, headers, body = await get(client, f"/avatar/{person.upn}/96")
    assert headers["X-Avatar-Source"] == "photo"
    assert decode(body).size == (96, 96)
    assert graph_paths(fake_graph)[-1].endswith("/photo/$value")
    _, _, body = await get(client, f"/avatar/{person.upn}/1000")
    assert decode(body).size == (1000, 1000)


async def test_second_request_any_case_is_served_from_cache_without_graph(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    first = await get(client, f"/avatar/{ADELE}/64")
    fake_graph.graph.reset_requests()
    second = await get(client, f"/avatar/{ADELE.upper()}/64")
    assert second[0] == 200 and second[2] == first[2]
    assert second[1]["ETag"] == first[1]["ETag"]
    assert fake_graph.graph.requests == []


async def test_restarted_service_on_the_same_redis_makes_no_graph_call(
        make_client: MakeClient, fake_graph: Any) -> None:
    first = await make_client()
    _, _, body = await get(first, f"/avatar/{ADELE}/96")
    await first.close()
    fake_graph.graph.reset_requests()
    second = await make_client()
    status, _, again = await get(second, f"/avatar/{ADELE}/96")
    assert status == 200 and again == body
    assert fake_graph.graph.requests == []


async def test_concurrent_misses_share_one_graph_fetch(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__redis_url="")  # no Redis: the memory tier only
    fake_graph.graph.latency = 0.2
    results = await asyncio.gather(*(get(client, f"/avatar/{ADELE}/120") for _ in range(25)))
    assert {r[0] for r in results} == {200}
    assert len({r[2] for r in results}) == 1
    assert graph_paths(fake_graph).count(f"/v1.0/users/{ADELE}/photo") == 1
    assert graph_paths(fake_graph).count(f"/v1.0/users/{ADELE}/photos/120x120/$value") == 1


async def test_changed_photo_gets_new_etag_once_metadata_expires(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__metadata_ttl_seconds=1)
    _, before, body = await get(client, f"/avatar/{ALEX}/48")
    fake_graph.graph.set_photo(ALEX, Image.new("RGB", (240, 240), (0, 200, 0)))
    await asyncio.sleep(1.1)
    # Stale-while-revalidate: the stale photo at once, the new one once refreshed.
    _, stale, _ = await get(client, f"/avatar/{ALEX}/48")
    assert stale["ETag"] == before["ETag"]
    for _ in range(100):
        _, after, new_body = await get(client, f"/avatar/{ALEX}/48")
        if after["ETag"] != before["ETag"]:
            break
        await asyncio.sleep(0.01)
    assert after["ETag"] != before["ETag"]
    assert new_body != body
    assert decode(new_body).convert("RGB").getpixel((24, 24))[1] > 180


@pytest.mark.parametrize("kind", ["missing", "placeholder"])
async def test_no_photo_gives_initials_cached_as_no_photo(
        make_client: MakeClient, fake_graph: Any, kind: str) -> None:
    if kind == "missing":
        person = fake_graph.find(lambda p: p.photo is None and not p.placeholder)
    else:
        person = fake_graph.find(lambda p: p.placeholder)
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/{person.upn}/72")
    assert status == 200
    assert headers["X-Avatar-Source"] == "initials"
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "public, max-age=300"
    image = decode(body)
    assert image.size == (72, 72)
    assert len(image.convert("RGB").getcolors(1 << 16) or []) > 2  # text on the background
    assert any("$select=" in p for p in graph_paths(fake_graph))  # the name was asked for
    fake_graph.graph.reset_requests()
    assert (await get(client, f"/avatar/{person.upn}/72"))[2] == body
    assert fake_graph.graph.requests == []


async def test_unknown_user_gets_initials_from_the_upn(
        make_client: MakeClient) -> None:
    client = await make_client()
    status, headers, body = await get(client, "/avatar/nobody.here@contoso.com/48")
    assert status == 200 and headers["X-Avatar-Source"] == "initials"
    assert decode(body).size == (48, 48)


async def test_fallback_404_answers_404_instead_of_initials(
        make_client: MakeClient, fake_graph: Any) -> None:
    person = fake_graph.find(lambda p: p.photo is None and not p.placeholder)
    client = await make_client()
    status, headers, _ = await get(client, f"/avatar/{person.upn}/48?fallback=404")
    assert status == 404
    assert headers["Content-Type"].startswith("text/plain")
    assert (await get(client, f"/avatar/{ADELE}/48?fallback=404"))[0] == 200


@pytest.mark.parametrize("path", [
    "/avatar/adele.vance@contoso.com/0", "/avatar/adele.vance@contoso.com/1025",
    "/avatar/adele.vance@contoso.com/abc", "/avatar/adele.vance@contoso.com/48x64",
    "/avatar/adele.vance@contoso.com/-5", "/avatar/adele.vance@contoso.com/4.5",
    "/avatar/not-a-upn/48", "/avatar/adèle@contoso.com/48", "/avatar/a%2Fb@contoso.com/48",
    "/avatar/%24%24x@contoso.com/48", "/avatar/adele.vance@contoso.com/48?fallback=mp",
    "/avatar/" + "x" * 200 + "@contoso.com/48",
])
async def test_bad_requests_are_400_plain_text_without_graph_calls(
        make_client: MakeClient, fake_graph: Any, path: str) -> None:
    client = await make_client()
    status, headers, body = await get(client, path)
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Cache-Control"] == "no-store"
    assert 0 < len(body) < 200 and b"Traceback" not in body
    assert fake_graph.graph.requests == []


async def test_unknown_route_is_a_plain_404(make_client: MakeClient) -> None:
    client = await make_client()
    status, headers, _ = await get(client, "/avatar/adele.vance@contoso.com")
    assert status == 404 and headers["Content-Type"].startswith("text/plain")


async def test_head_gives_the_get_headers_without_a_body(make_client: MakeClient) -> None:
    client = await make_client()
    _, get_headers, body = await get(client, f"/avatar/{ADELE}/48")
    async with client.head(f"/avatar/{ADELE}/48") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
        for name in ("Content-Type", "ETag", "Cache-Control", "X-Avatar-Source"):
            assert resp.headers[name] == get_headers[name]
        assert int(resp.headers["Content-Length"]) == len(body)


async def test_guest_upn_reaches_graph_percent_encoded(
        make_client: MakeClient, fake_graph: Any) -> None:
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn.upper())
    client = await make_client()
    encoded = guest.upn.replace("#", "%23")
    status, _, _ = await get(client, f"/avatar/{encoded}/48")
    assert status == 200
    encoded_lower = guest.upn.lower().replace("#", "%23")
    assert graph_paths(fake_graph)[0] == f"/v1.0/users/{encoded_lower}/photo"


async def test_dollar_upn_uses_the_key_form(make_client: MakeClient, fake_graph: Any) -> None:
    person = fake_graph.find(lambda p: p.upn.startswith("$"))
    client = await make_client()
    status, headers, _ = await get(client, f"/avatar/{person.upn}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert graph_paths(fake_graph)[0] == f"/v1.0/users('{person.upn.lower()}')/photo"


async def test_apostrophe_upn_and_object_id_both_work(
        make_client: MakeClient, fake_graph: Any) -> None:
    person = fake_graph.find(lambda p: "'" in p.upn)
    client = await make_client()
    status, _, _ = await get(client, f"/avatar/{person.upn}/48")
    assert status == 200
    adele_id = fake_graph.find(lambda p: p.upn == ADELE).object_id
    status, headers, _ = await get(client, f"/avatar/{adele_id.upper()}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"


async def test_graph_401_refreshes_the_token_once(
        make_client: MakeClient, fake_graph: Any, fake_idp: Any) -> None:
    client = await make_client()
    fake_graph.graph.inject(401, times=1)
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert len(fake_idp.token_requests) == 2


async def test_graph_403_serves_short_lived_initials_and_logs_the_permission_once(
        make_client: MakeClient, fake_graph: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await make_client()
    fake_graph.graph.inject(403, times=2)
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
            assert status == 200
            assert headers["X-Avatar-Source"] == "initials"
            assert headers["Cache-Control"] == "public, max-age=60"
    assert [r.getMessage() for r in caplog.records].count(
        "Graph denied metadata: grant the application permission ProfilePhoto.Read.All "
        "(serving initials meanwhile)") == 1
    # Not cached as "no photo": once permitted, the photo appears.
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "photo"


@pytest.mark.parametrize("status_code", [429, 500, 503, 504])
async def test_graph_failure_without_cache_gives_short_lived_initials_not_5xx(
        make_client: MakeClient, fake_graph: Any, status_code: int) -> None:
    client = await make_client()
    fake_graph.graph.inject(status_code, times=10, headers={"Retry-After": "1.5"})
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200
    assert headers["X-Avatar-Source"] == "initials"
    assert headers["Cache-Control"] == "public, max-age=60"


async def test_graph_failure_with_stale_metadata_still_serves_the_photo(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__metadata_ttl_seconds=1)
    _, _, body = await get(client, f"/avatar/{ADELE}/48")
    await asyncio.sleep(1.1)
    fake_graph.graph.inject(503, times=10)
    status, headers, again = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo" and again == body


async def test_unicode_names_draw_their_own_initials(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    cyrillic = fake_graph.find(lambda p: p.display_name.startswith("Дмитрий"))
    fake_graph.graph.set_photo(cyrillic.upn, None)
    _, headers, body = await get(client, f"/avatar/{cyrillic.upn}/96")
    assert headers["X-Avatar-Source"] == "initials"
    ids = await get(client, f"/avatar/{cyrillic.object_id}/96")
    # Same person by UPN or object id: same colour (seeded by the object id), same picture.
    assert ids[2] == body


async def test_corrupt_photo_gives_short_lived_initials_and_is_not_cached(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client()
    # A 200 whose body is JSON, not an image: decoding proves it is not a photo.
    fake_graph.graph.inject(200, times=1, path_contains="$value")
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200
    assert headers["X-Avatar-Source"] == "initials"
    assert headers["Cache-Control"] == "public, max-age=60"
    _, headers, body = await get(client, f"/avatar/{ADELE}/48")
    assert headers["X-Avatar-Source"] == "photo" and decode(body).format == "JPEG"


async def test_graph_requests_go_through_the_configured_proxy(
        make_client: MakeClient, fake_graph: Any, aiohttp_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        async with ClientSession() as session, session.get(
                request.url, headers={"Authorization": request.headers["Authorization"]},
                allow_redirects=False) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type=upstream.content_type)

    proxy_app = web.Application()
    proxy_app.router.add_route("GET", "/{tail:.*}", forward)
    proxy = await aiohttp_server(proxy_app)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = await make_client()
    status, headers, _ = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert [url.split("/v1.0", 1)[1] for url in seen] == [
        f"/users/{ADELE}/photo", f"/users/{ADELE}/photos/48x48/$value"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    await get(client, "/avatar/megan.bowen@contoso.com/48")
    assert len(seen) == 2  # NO_PROXY is honoured


def test_unloadable_extra_font_stops_start_up_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"avatar\.extra_fonts"):
        create_app(load_settings(env={}, overrides={"avatar.extra_fonts": ["/nonexistent.ttf"]}))


async def test_absent_hd_size_answered_1x1_falls_back_to_the_largest_photo(
        make_client: MakeClient, fake_graph: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    adele = fake_graph.find(lambda p: p.upn == ADELE)
    # This tenant kept no 48x48 copy: Graph answers that size with a 1x1 image.
    monkeypatch.setattr(adele, "sizes", lambda: [(s, s) for s in (64, 96, 120, 240, 648)])
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/{ADELE}/48")
    assert status == 200 and headers["X-Avatar-Source"] == "photo"
    assert decode(body).size == (48, 48)
    assert graph_paths(fake_graph)[1:] == [f"/v1.0/users/{ADELE}/photos/48x48/$value",
                                           f"/v1.0/users/{ADELE}/photo/$value"]


async def test_every_size_derived_from_one_hd_photo_costs_one_download(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(cache__redis_url="")  # no Redis: the memory tier only
    for size in (32, 40, 48):
        assert (await get(client, f"/avatar/{ALEX}/{size}"))[0] == 200
    results = await asyncio.gather(*(get(client, f"/avatar/{ALEX}/{s}") for s in (33, 34, 35)))
    assert [decode(body).size for _, _, body in results] == [(33, 33), (34, 34), (35, 35)]
    paths = graph_paths(fake_graph)
    assert paths.count(f"/v1.0/users/{ALEX}/photos/48x48/$value") == 1
    assert paths.count(f"/v1.0/users/{ALEX}/photo") == 1


async def test_a_new_renderer_version_serves_new_bytes_rendered_without_a_new_download(
        make_client: MakeClient, fake_graph: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, before, old = await get(await make_client(), f"/avatar/{ADELE}/48")
    fake_graph.graph.reset_requests()
    # A deploy whose renderer draws differently (here: coarser JPEG) and says so.
    render, rendered = imaging.render_photo, []

    def coarser(data: bytes, size: int, fmt: str) -> bytes:
        out = io.BytesIO()
        Image.open(io.BytesIO(render(data, size, fmt))).save(out, "JPEG", quality=20)
        rendered.append(out.getvalue())
        return rendered[-1]

    monkeypatch.setattr(imaging, "render_photo", coarser)
    monkeypatch.setattr(imaging, "RENDERER_VERSION", "next")
    status, after, new = await get(await make_client(), f"/avatar/{ADELE}/48")  # a new process
    assert (status, after["X-Avatar-Source"]) == (200, "photo")
    assert after["ETag"] != before["ETag"]
    assert new != old and rendered == [new]  # the new renderer's bytes, not the cached ones
    assert decode(new).size == (48, 48)
    # From the photo kept as downloaded and the cached metadata: Graph is not asked.
    assert fake_graph.graph.requests == []
