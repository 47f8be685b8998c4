"""What an answer shows depends on the page asking (``avatarproxy/sites.py``), over
HTTP with the headers browsers send; tests/test_crosssite.py does it in Chromium."""

from __future__ import annotations

from typing import Any

import pytest
from appclient import MakeClient, get

from avatarproxy.security import sign_url

PHOTO = "/avatar/adele.vance@contoso.com/48"
NO_PHOTO = "/avatar/diego.siciliani@contoso.com/48?fallback=404"
EVIL = {"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/"}
INTRANET = {"Sec-Fetch-Site": "cross-site", "Referer": "https://intranet.contoso.com/news/today"}


async def answers(client: Any, headers: dict[str, str],
                  photo: str = PHOTO, no_photo: str = NO_PHOTO) -> tuple[Any, ...]:
    """(status of ?fallback=404 for a person without a photo, the photo's Cache-Control
    and Vary)."""
    status, _, _ = await get(client, no_photo, headers=headers)
    _, photo_headers, _ = await get(client, photo, headers=headers)
    return status, photo_headers["Cache-Control"], photo_headers.getall("Vary")


async def test_another_websites_page_gets_initials_and_the_initials_caching(
        make_client: MakeClient) -> None:
    client = await make_client(server__intranet_origins=["https://intranet.contoso.com"])
    status, cache_control, vary = await answers(client, EVIL)
    assert (status, cache_control) == (200, "private, max-age=300")
    assert "Sec-Fetch-Site" in vary
    _, headers, _ = await get(client, NO_PHOTO, headers=EVIL)
    assert (headers["X-Avatar-Source"], headers["Cache-Control"]) == (
        "initials", "private, max-age=300")
    # Withholding the Referer makes a page no more listed.
    assert (await answers(client, {"Sec-Fetch-Site": "cross-site"}))[0] == 200


@pytest.mark.parametrize(("settings", "headers"), [
    # Listed, however the operator wrote it; the Referer names the page's origin.
    ({"server__intranet_origins": ["HTTPS://Intranet.Contoso.com/"]}, INTRANET),
    # An origin trusted with the pixels is trusted with who has a photo.
    ({"server__cors_origins": ["https://intranet.contoso.com"]},
     {"Sec-Fetch-Site": "cross-site", "Origin": "https://intranet.contoso.com"}),
])
async def test_a_listed_sites_page_keeps_the_404_and_long_but_private_caching(
        make_client: MakeClient, settings: dict[str, Any], headers: dict[str, str]) -> None:
    client = await make_client(**settings)
    status, cache_control, _ = await answers(client, headers)
    assert status == 404
    assert cache_control == "private, max-age=3600, stale-while-revalidate=86400"


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "none"},  # typed into the address bar
    {},  # no browser (or one without Fetch Metadata): it sees X-Avatar-Source anyway
])
async def test_the_services_own_site_and_other_callers_are_answered_as_ever(
        make_client: MakeClient, headers: dict[str, str]) -> None:
    client = await make_client()
    status, cache_control, vary = await answers(client, headers)
    assert (status, cache_control) == (404, "public, max-age=3600, stale-while-revalidate=86400")
    assert vary == ["Accept", "Sec-Fetch-Site"]  # a shared cache keeps the sites apart


async def test_signed_urls_or_every_site_listed_need_no_difference(
        make_client: MakeClient) -> None:
    # Signed, a page can ask only for what it was given: nothing to hide from it.
    key = "k" * 32
    client = await make_client(security__url_signing_keys=[key])
    assert await answers(client, EVIL, sign_url(key, PHOTO), sign_url(key, NO_PHOTO)) == (
        404, "public, max-age=3600, stale-while-revalidate=86400", ["Accept"])
    client = await make_client(server__intranet_origins=["*"])
    assert await answers(client, EVIL) == (
        404, "public, max-age=3600, stale-while-revalidate=86400", ["Accept"])


@pytest.mark.parametrize("referer", ["http://[::1/", "https://[nope"])
async def test_a_malformed_referer_is_an_unlisted_page_not_an_error(
        make_client: MakeClient, referer: str, caplog: pytest.LogCaptureFixture) -> None:
    client = await make_client(server__intranet_origins=["https://intranet.contoso.com"])
    headers = {"Sec-Fetch-Site": "cross-site", "Referer": referer}
    status, photo_headers, _ = await get(client, PHOTO, headers=headers)
    assert (status, photo_headers["X-Avatar-Source"]) == (200, "photo")
    assert (await get(client, NO_PHOTO, headers=headers))[0] == 200  # no 404 oracle
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_an_opaque_origin_is_never_a_listed_page(make_client: MakeClient) -> None:
    client = await make_client(server__intranet_origins=["https://intranet.contoso.com"])
    # A sandboxed page sends Origin: null; its Referer must not make it the intranet.
    headers = {**INTRANET, "Origin": "null"}
    assert (await get(client, NO_PHOTO, headers=headers))[0] == 200


async def test_another_website_cannot_tell_a_refused_guest_from_nobody(
        make_client: MakeClient, fake_graph: Any) -> None:
    guest = fake_graph.find(lambda p: "#EXT#" in p.upn)
    guest.mail = "john@fabrikam.com"
    client = await make_client(security__allow_guests=False)
    probes = ["/avatar/john@fabrikam.com/48?fallback=404",  # the guest, by mail
              "/avatar/jane@fabrikam.com/48?fallback=404",  # nobody
              f"/avatar/{guest.object_id}/48?fallback=404",  # the guest, by id
              "/avatar/00000000-0000-4000-8000-00000000dead/48?fallback=404"]  # nobody
    seen = set()
    for probe in probes:
        status, headers, _ = await get(client, probe, headers=EVIL)
        seen.add((status, headers["Cache-Control"], headers.get("X-Avatar-Source")))
    assert seen == {(200, "private, max-age=300", "initials")}
    # In the network, the rules still answer 404 for the guest.
    assert (await get(client, "/avatar/john@fabrikam.com/48"))[0] == 404
