"""What browsers and shared caches see: conditional requests, Cache-Control,
content negotiation with Vary, SVG initials, CORS and resource policy.

The service runs against the fake Graph on loopback with a fixed token (as
in the demo) and its memory tier; it is driven over real HTTP.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from appclient import Client, MakeClient, client_factory
from multidict import CIMultiDict
from PIL import Image

from avatarproxy import imaging
from avatarproxy.demo.people import FakePerson
from avatarproxy.graph.auth import StaticTokenProvider
from avatarproxy.initials import InitialsRenderer
from avatarproxy.sizing import background_for

ADELE = "adele.vance@contoso.com"  # 648x648 photo
DIEGO = "diego.siciliani@contoso.com"  # no photo
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
OLD = "image/png,image/*;q=0.8,*/*;q=0.5"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def make_client(aiohttp_client: Any, fake_graph: Any) -> MakeClient:
    """A client to a fresh service on the fake Graph with a fixed token, no Redis."""
    fake_graph.graph.accept_token = "t0ken".__eq__
    return client_factory(aiohttp_client, {"graph.base_url": fake_graph.base_url},
                          tokens=StaticTokenProvider("t0ken"))


async def get(client: Client, path: str, accept: str = OLD,
              **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    sent = {"Accept": accept, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with client.get(path, headers=sent) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


@pytest.mark.parametrize("upn", [ADELE, DIEGO])
async def test_if_none_match_with_the_current_etag_gives_304_without_body(
        make_client: MakeClient, upn: str) -> None:
    client = await make_client()
    _, first, _ = await get(client, f"/avatar/{upn}/96")
    etag = first["ETag"]
    for header in (etag, f'"stale", {etag}', f"W/{etag}", "*"):
        status, headers, body = await get(client, f"/avatar/{upn}/96", If_None_Match=header)
        assert (status, body) == (304, b""), header
        for name in ("ETag", "Cache-Control", "Vary", "X-Avatar-Source"):
            assert headers[name] == first[name]
    status, _, body = await get(client, f"/avatar/{upn}/96", If_None_Match='"stale"')
    assert status == 200 and body
    async with client.head(f"/avatar/{upn}/96", headers={"Accept": OLD,
                                                         "If-None-Match": etag}) as resp:
        assert resp.status == 304 and await resp.read() == b""


async def test_cache_control_photos_revalidate_in_background_initials_expire_sooner(
        make_client: MakeClient) -> None:
    client = await make_client()
    _, photo, _ = await get(client, f"/avatar/{ADELE}/48")
    assert photo["Cache-Control"] == "public, max-age=3600, stale-while-revalidate=86400"
    _, initials, _ = await get(client, f"/avatar/{DIEGO}/48")
    assert initials["Cache-Control"] == "public, max-age=300"
    status, error, _ = await get(client, f"/avatar/{ADELE}/0")
    assert status == 400 and error["Cache-Control"] == "no-store"
    assert "Last-Modified" not in photo and "Last-Modified" not in initials
    client = await make_client(cache__browser_max_age=60, cache__stale_while_revalidate=0)
    assert (await get(client, f"/avatar/{ADELE}/48"))[1]["Cache-Control"] == \
        "public, max-age=60"


@pytest.mark.parametrize(("accept", "size", "fmt"), [
    (CHROME, 240, "AVIF"), (CHROME, 48, "WEBP"), ("image/webp,*/*", 240, "WEBP"),
    (OLD, 240, "JPEG"), ("", 240, "JPEG"),
])
async def test_photo_format_follows_accept_and_every_answer_varies_on_it(
        make_client: MakeClient, accept: str, size: int, fmt: str) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/{ADELE}/{size}", accept=accept)
    assert status == 200
    image = decode(body)
    assert (image.format, image.size) == (fmt, (size, size))
    assert headers["Content-Type"] == f"image/{fmt.lower()}"
    assert headers["Vary"] == "Accept"


async def test_each_format_has_its_own_etag(make_client: MakeClient) -> None:
    client = await make_client()
    etags = {(await get(client, f"/avatar/{ADELE}/240", accept=accept))[1]["ETag"]
             for accept in (CHROME, "image/webp", OLD)}
    assert len(etags) == 3
    etags = {(await get(client, f"/avatar/{DIEGO}/240", accept=accept))[1]["ETag"]
             for accept in (CHROME, OLD)}
    assert len(etags) == 2


async def test_initials_are_lossless_webp_or_png_never_lossy(make_client: MakeClient) -> None:
    client = await make_client()
    _, webp_headers, webp = await get(client, f"/avatar/{DIEGO}/96", accept=CHROME)
    _, png_headers, png = await get(client, f"/avatar/{DIEGO}/96", accept=OLD)
    _, _, forced = await get(client, f"/avatar/{DIEGO}/96?format=jpeg", accept=CHROME)
    assert webp_headers["Content-Type"] == "image/webp"
    assert png_headers["Content-Type"] == "image/png"
    assert decode(forced).format == "PNG"  # a lossy request still gets sharp text
    assert decode(webp).convert("RGB").tobytes() == decode(png).convert("RGB").tobytes()
    assert webp_headers["Vary"] == png_headers["Vary"] == "Accept"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
async def test_format_query_forces_the_photo_format_whatever_accept_says(
        make_client: MakeClient, fmt: str) -> None:
    client = await make_client()
    status, headers, body = await get(client, f"/avatar/{ADELE}/64?format={fmt}", accept=OLD)
    assert status == 200 and decode(body).format == fmt.upper()
    assert "Accept" not in headers.getall("Vary")  # Accept played no part


async def test_unknown_query_parameters_are_ignored(make_client: MakeClient) -> None:
    client = await make_client()
    plain = await get(client, f"/avatar/{ADELE}/48")
    busted = await get(client, f"/avatar/{ADELE}/48?v=3&utm_source=mail&size=9")
    assert busted[0] == 200 and busted[2] == plain[2]
    assert busted[1]["ETag"] == plain[1]["ETag"]
    assert (await get(client, f"/avatar/{ADELE}/48?format=gif"))[0] == 400


async def test_svg_initials_are_vector_and_script_free(
        make_client: MakeClient, fake_graph: Any) -> None:
    client = await make_client(avatar__svg_title=True)
    status, headers, body = await get(client, f"/avatar/{DIEGO}/120?format=svg", accept=CHROME)
    assert status == 200
    assert headers["Content-Type"] == "image/svg+xml"
    assert "default-src 'none'" in headers["Content-Security-Policy"]  # no scripts
    root = ET.fromstring(body)
    assert (root.tag, root.get("width"), root.get("height")) == (f"{SVG}svg", "120", "120")
    assert root.findtext(f"{SVG}title") == "Diego Siciliani"
    assert root.findtext(f"{SVG}text") == "DS"
    # A person with a photo gets the photo: SVG cannot improve it.
    _, headers, body = await get(client, f"/avatar/{ADELE}/120?format=svg", accept=CHROME)
    assert headers["X-Avatar-Source"] == "photo" and decode(body).format == "WEBP"
    assert headers["Vary"] == "Accept"


@pytest.mark.parametrize("name", [
    "<script>alert(1)</script>", "Eve\" onload=\"alert(1)", "]]><svg onload=alert(1)>",
    "&amp; <!-- --> <?xml?>", "Mallory\u202e\u0000<b>",
])
async def test_svg_never_turns_a_display_name_into_markup(
        make_client: MakeClient, fake_graph: Any, name: str) -> None:
    fake_graph.graph.add(FakePerson(upn="eve@contoso.com",
                                    object_id="0e0e0e0e-0e0e-4e0e-8e0e-0e0e0e0e0e0e",
                                    display_name=name))
    client = await make_client(avatar__svg_title=True)
    status, headers, body = await get(client, "/avatar/eve@contoso.com/64?format=svg")
    assert status == 200 and headers["X-Avatar-Source"] == "initials"
    root = ET.fromstring(body)  # well-formed
    assert [el.tag for el in root.iter()] == [f"{SVG}svg", f"{SVG}title", f"{SVG}rect",
                                              f"{SVG}text"]
    assert all(not key.startswith("on") for el in root.iter() for key in el.attrib)
    assert root.findtext(f"{SVG}title") == name.replace("\u0000", "")
    assert b"<script" not in body and b"onload" not in body


async def test_svg_initials_name_nobody_unless_the_operator_asks(
        make_client: MakeClient) -> None:
    # Unsigned URLs would otherwise turn any address into its owner's name.
    client = await make_client()
    _, _, body = await get(client, f"/avatar/{DIEGO}/120?format=svg", accept=CHROME)
    root = ET.fromstring(body)
    assert [root.findtext(f"{SVG}title"), root.findtext(f"{SVG}text")] == ["DS", "DS"]
    assert not any("Diego" in (el.text or "") for el in root.iter())
    client = await make_client(avatar__svg_title=True)
    _, _, body = await get(client, f"/avatar/{DIEGO}/120?format=svg", accept=CHROME)
    assert ET.fromstring(body).findtext(f"{SVG}title") == "Diego Siciliani"


async def test_characters_xml_forbids_are_dropped_from_svg_and_raster_initials(
        make_client: MakeClient, fake_graph: Any) -> None:
    # Graph's JSON can carry a lone surrogate escape; U+FFFE and U+FFFF are noncharacters.
    fake_graph.graph.add(FakePerson(
        upn="ada@contoso.com", object_id="0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a",
        display_name="\ud800Ada \ufffeLove\uffffla\udfffce", given_name="\udc00",
        surname="Lovelace"))
    client = await make_client(avatar__svg_title=True)
    status, headers, body = await get(client, "/avatar/ada@contoso.com/64?format=svg")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    root = ET.fromstring(body)  # a browser would refuse &#xd800; or &#xfffe;
    assert root.findtext(f"{SVG}title") == "Ada Lovelace"
    assert root.findtext(f"{SVG}text") == "AL"
    status, headers, body = await get(client, "/avatar/ada@contoso.com/64", accept=OLD)
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert decode(body).format == "PNG"
    # The letters of "Ada Lovelace", not the surname's alone after an empty given name.
    colour = background_for("0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a")
    assert body == InitialsRenderer().render(["AL"], colour, 64, "png")


async def test_a_new_renderer_version_changes_every_etag(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await make_client()
    paths = [f"/avatar/{ADELE}/48", f"/avatar/{DIEGO}/48", f"/avatar/{DIEGO}/48?format=svg"]
    before = [(await get(client, p))[1]["ETag"] for p in paths]
    monkeypatch.setattr(imaging, "RENDERER_VERSION", "deployed-later")
    client = await make_client()
    after = [(await get(client, p))[1]["ETag"] for p in paths]
    assert all(b != a for b, a in zip(before, after, strict=True))


async def test_cors_is_off_by_default(make_client: MakeClient) -> None:
    client = await make_client()
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48", Origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in headers
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_cors_allows_only_the_listed_origins(make_client: MakeClient) -> None:
    client = await make_client(server__cors_origins=["https://intranet.contoso.com"],
                               server__cross_origin_resource_policy="same-site")
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48",
                              Origin="https://intranet.contoso.com")
    assert headers["Access-Control-Allow-Origin"] == "https://intranet.contoso.com"
    assert "X-Avatar-Source" in headers["Access-Control-Expose-Headers"]
    assert headers.getall("Vary") == ["Origin", "Accept", "Sec-Fetch-Site"]
    assert headers["Cross-Origin-Resource-Policy"] == "same-site"
    _, headers, _ = await get(client, f"/avatar/{ADELE}/48", Origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in headers


async def test_cors_preflight_is_answered_for_the_listed_origins(
        make_client: MakeClient, fake_graph: Any) -> None:
    # A script's fetch with If-None-Match asks first; signed URLs or not, no Graph call.
    client = await make_client(server__cors_origins=["https://intranet.contoso.com"],
                               security__url_signing_keys=["k" * 32])
    fake_graph.graph.reset_requests()
    asks = {"Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match"}
    for path in (f"/avatar/{ADELE}/48", "/avatar/group/8a3b9d3e-0000-4000-8000-000000000001/48"):
        async with client.options(path, headers={
                "Origin": "https://intranet.contoso.com", **asks}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://intranet.contoso.com"
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]
            assert "if-none-match" in resp.headers["Access-Control-Allow-Headers"].lower()
            assert "Origin" in resp.headers.getall("Vary")
        async with client.options(path, headers={"Origin": "https://evil.example", **asks}) as resp:
            assert resp.status == 204
            assert not any(h.startswith("Access-Control-") for h in resp.headers)
    assert fake_graph.graph.requests == []
