"""Photos as people upload them (tests/photos.py), served by the fake Graph as
exact bytes, with ``Content-Length`` or chunked, and taken end to end through
the service: each must come out as the right person's photo, the right way up,
in sRGB, at exactly the requested size; or as initials with a log line saying why."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import ClientSession
from appclient import Client, MakeClient, get
from faultproxy import INTERNET, FaultProxy
from photos import (
    GRAPH_UPLOAD_LIMIT,
    Look,
    colour_distance,
    cut_out,
    display_p3_profile,
    encode,
    hd_bodies,
    heic_like,
    large_original,
    mark_corner,
    p3_image_to_srgb,
    p3_look,
    photo_of,
    png_16bit,
    srgb_to_p3,
    truncated_scan,
    with_orientation,
    with_trailing_garbage,
)
from PIL import Image, ImageCms

from avatarproxy.demo.people import FakePerson
from avatarproxy.demo.photos import HD_SIZES, RawPhoto

# Whose photo is it: each case gets a person with colours of their own.
LOOKS = (
    Look("#1f4e79", "#9dc3e6", "#c55a11"),
    Look("#7f6000", "#ffe699", "#2f5597"),
    Look("#375623", "#c5e0b4", "#7030a0"),
    Look("#843c0c", "#f8cbad", "#00b0f0"),
    Look("#3a3838", "#d0cece", "#e21a1a"),
    Look("#203864", "#f4b183", "#70ad47"),
)
# Largest per-cell difference of mean colour still "the same photo": JPEG at
# q75-q90 in, q85 out, through resampling. Another person's photo is far above it.
TOLERANCE = 6
ENTRA_SIDE = 500  # not an HD size: an Entra-only photo, served as uploaded
# A 4 MB original takes a second or so on a busy CI machine: what is tested
# here is the picture, not the 3 s default deadline (test_resilience has that).
LARGE_DEADLINE = 30.0
JPEG_ONLY = {"Accept": "image/jpeg"}


def decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def expected(upright: Image.Image, size: int) -> Image.Image:
    """What the service should make of ``upright``: its centre square at ``size``."""
    side = min(upright.size)
    left, top = (upright.width - side) // 2, (upright.height - side) // 2
    return upright.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.LANCZOS)


def on_white(rgba: Image.Image) -> Image.Image:
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


@pytest.fixture
def person(fake_graph: Any) -> Callable[..., str]:
    """``person(name, bodies, content_type=..., chunked=...)``: a new user whose
    photo is exactly ``bodies``; returns their UPN."""
    def add(name: str, bodies: dict[tuple[int, int], bytes], content_type: str = "image/jpeg",
            chunked: bool = False) -> str:
        upn = f"corpus.{name}@contoso.com"
        fake_graph.graph.add(FakePerson(
            upn=upn, object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, upn)),
            display_name=f"Corpus {name.title()}", given_name="Corpus", surname=name.title(),
            raw=RawPhoto(bodies, content_type, chunked)))
        return upn
    return add


async def photo(client: Client, upn: str, size: int, **headers: str) -> Image.Image:
    status, answer, body = await get(client, f"/avatar/{upn}/{size}",
                                     headers=headers or JPEG_ONLY)
    assert (status, answer["X-Avatar-Source"]) == (200, "photo")
    image = decode(body)
    assert image.size == (size, size)
    return image


def test_the_looks_tell_people_apart() -> None:
    photos = [photo_of(look, 96) for look in LOOKS]
    for i, one in enumerate(photos):
        for other in photos[i + 1:]:
            assert colour_distance(one, other) > 4 * TOLERANCE


# -- Exchange photos: every HD size, realistic bytes, both transfer framings --

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_every_hd_size_of_a_realistic_photo_is_that_person_the_right_way_up(
        make_client: MakeClient, fake_graph: Any, person: Callable[..., str],
        chunked: bool) -> None:
    bodies = hd_bodies(LOOKS[0])
    assert 20_000 < len(bodies[(648, 648)]) < 100_000  # tens of KB, as Exchange sends
    upn = person("exchange", bodies, chunked=chunked)
    client = await make_client()
    for size in HD_SIZES:
        image = await photo(client, upn, size)
        assert fake_graph.graph.requests[-1].raw_path.endswith(f"/photos/{size}x{size}/$value")
        assert mark_corner(image) == "top-left", size
        assert colour_distance(image, expected(photo_of(LOOKS[0], 648), size)) < TOLERANCE, size


async def test_the_fake_graph_sends_chunked_bodies_in_several_chunks(
        fake_graph: Any, person: Callable[..., str]) -> None:
    bodies = hd_bodies(LOOKS[0], side=240)
    upn = person("chunks", bodies, chunked=True)
    url = f"{fake_graph.base_url}/users/{upn}/photos/240x240/$value"
    async with ClientSession() as session, session.get(
            url, headers={"Authorization": "Bearer x"}) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
        chunks, body = 0, b""
        async for data, end_of_chunk in resp.content.iter_chunks():
            body += data
            chunks += end_of_chunk
    assert body == bodies[(240, 240)] and chunks >= 2


# -- Entra-only originals: camera-sized, up to Graph's 4 MB limit ------------------

async def test_a_4_mb_phone_original_through_the_network_is_upright_and_cropped(
        make_client: MakeClient, fake_graph: Any, graph_proxy: FaultProxy,
        person: Callable[..., str]) -> None:
    # A phone holds the sensor landscape (4000x3000) and tags it "rotate 90"
    # (orientation 6): the person stands upright only once the tag is applied.
    body = large_original(LOOKS[1], orientation=6)
    assert GRAPH_UPLOAD_LIMIT * 0.75 < len(body) <= GRAPH_UPLOAD_LIMIT
    upn = person("original", {(4000, 3000): body})
    # 1,400-byte TCP segments, without INTERNET's pause: ~3,000 of them would
    # otherwise take 6 s, past the request's deadline.
    graph_proxy.faults = replace(INTERNET, pause=0.0)
    client = await make_client(graph__base_url=f"http://127.0.0.1:{graph_proxy.port}/v1.0",
                               server__request_deadline_seconds=LARGE_DEADLINE)
    image = await photo(client, upn, 300)
    assert fake_graph.graph.requests[-1].raw_path.endswith("/photo/$value")
    upright = photo_of(LOOKS[1], 600, 800)  # the same picture, smaller: quicker to make
    # The crop cuts the corner mark off; the gradient's direction shows a wrong turn.
    assert colour_distance(image, expected(upright, 300)) < TOLERANCE
    assert graph_proxy.accepted >= 1


async def test_a_progressive_4000x3000_original_sent_chunked_is_served(
        make_client: MakeClient, person: Callable[..., str]) -> None:
    body = large_original(LOOKS[2], progressive=True)
    assert len(body) <= GRAPH_UPLOAD_LIMIT
    upn = person("progressive", {(4000, 3000): body}, chunked=True)
    client = await make_client(server__request_deadline_seconds=LARGE_DEADLINE)
    image = await photo(client, upn, 648)
    assert colour_distance(image, expected(photo_of(LOOKS[2], 1600, 1200), 648)) < TOLERANCE


# -- Orientation ------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
async def test_every_exif_orientation_comes_out_upright(
        make_client: MakeClient, person: Callable[..., str], orientation: int) -> None:
    upright = photo_of(LOOKS[3], ENTRA_SIDE)
    upn = person(f"orientation{orientation}",
                 {(ENTRA_SIDE, ENTRA_SIDE): with_orientation(upright, orientation, quality=90)})
    image = await photo(await make_client(), upn, 96)
    assert mark_corner(image) == "top-left"
    assert colour_distance(image, expected(upright, 96)) < TOLERANCE


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
async def test_exif_orientation_outside_jpeg_is_applied_too(
        make_client: MakeClient, person: Callable[..., str], fmt: str) -> None:
    upright = photo_of(LOOKS[3], ENTRA_SIDE)
    upn = person(f"orientation-{fmt.lower()}",
                 {(ENTRA_SIDE, ENTRA_SIDE): with_orientation(upright, 8, fmt)},
                 content_type=f"image/{fmt.lower()}")
    image = await photo(await make_client(), upn, 96)
    assert mark_corner(image) == "top-left"
    assert colour_distance(image, expected(upright, 96)) < TOLERANCE


# -- Encodings and colour ---------------------------------------------------------

def _photo_cases() -> dict[str, tuple[Callable[[Image.Image], bytes], str,
                                      Callable[[Image.Image], Image.Image]]]:
    """name -> (how it is stored, Content-Type Graph sends, what should come out)."""
    same = lambda image: image  # noqa: E731
    grey = lambda image: image.convert("L")  # noqa: E731
    return {
        "progressive-jpeg": (lambda im: encode(im, quality=90, progressive=True),
                             "image/jpeg", same),
        "cmyk-jpeg": (lambda im: encode(im.convert("CMYK"), quality=90), "image/jpeg", same),
        "grayscale-jpeg": (lambda im: encode(im.convert("L"), quality=90), "image/jpeg", grey),
        "webp": (lambda im: encode(im, "WEBP", quality=80), "image/webp", same),
        "png-16-bit-rgb": (png_16bit, "image/png", same),
        "png-16-bit-grey": (lambda im: png_16bit(im.convert("L")), "image/png", grey),
        "png-16-bit-rgba": (lambda im: png_16bit(im.convert("RGBA")), "image/png", same),
        # Bodies that lie about themselves.
        "png-sent-as-jpeg": (lambda im: encode(im, "PNG"), "image/jpeg", same),
        "jpeg-with-trailing-garbage": (lambda im: with_trailing_garbage(encode(im, quality=90)),
                                       "image/jpeg", same),
    }


@pytest.mark.parametrize("case", list(_photo_cases()))
async def test_each_encoding_comes_out_as_the_persons_photo_in_srgb(
        make_client: MakeClient, person: Callable[..., str], case: str) -> None:
    store, content_type, becomes = _photo_cases()[case]
    look = LOOKS[4]
    upright = photo_of(look, ENTRA_SIDE)
    upn = person(case, {(ENTRA_SIDE, ENTRA_SIDE): store(upright)}, content_type)
    image = await photo(await make_client(), upn, 120)
    assert image.mode == "RGB"
    assert mark_corner(image) == "top-left"
    assert colour_distance(image, expected(becomes(upright), 120)) < TOLERANCE


def test_the_display_p3_profile_maps_colours_as_the_plain_maths_does() -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(display_p3_profile()))
    assert ImageCms.getProfileDescription(profile).strip() == "Display P3"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    for colour in [(224, 32, 32), (40, 200, 90), (30, 60, 220), (250, 200, 150)]:
        p3 = srgb_to_p3(colour)
        assert p3 != colour
        back = ImageCms.profileToProfile(Image.new("RGB", (1, 1), p3), profile, srgb)
        assert back is not None
        pixel = back.getpixel((0, 0))
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) <= 2 for a, b in zip(pixel, colour, strict=True))


async def test_display_p3_photo_is_converted_to_srgb(
        make_client: MakeClient, person: Callable[..., str]) -> None:
    look = LOOKS[4]
    stored = photo_of(p3_look(look), ENTRA_SIDE)  # the person's colours as P3 values
    upn = person("display-p3", {(ENTRA_SIDE, ENTRA_SIDE): encode(
        stored, quality=90, icc_profile=display_p3_profile())})
    image = await photo(await make_client(), upn, 120)
    assert colour_distance(image, p3_image_to_srgb(expected(stored, 120))) < TOLERANCE
    # The stored values, read as sRGB, would be visibly off: the test has teeth.
    assert colour_distance(expected(stored, 120), image) > 2 * TOLERANCE


async def test_transparent_pixels_become_white_in_jpeg_and_stay_transparent_in_webp(
        make_client: MakeClient, person: Callable[..., str]) -> None:
    upright = photo_of(LOOKS[5], ENTRA_SIDE)
    rgba = cut_out(upright)
    upn = person("alpha", {(ENTRA_SIDE, ENTRA_SIDE): encode(rgba, "PNG")}, "image/png")
    client = await make_client()
    jpeg = await photo(client, upn, 96)
    assert colour_distance(jpeg, expected(on_white(rgba), 96)) < TOLERANCE
    webp = await photo(client, upn, 96, Accept="image/webp")
    assert webp.mode == "RGBA"
    alpha = webp.getchannel("A")
    assert alpha.getpixel((95, 0)) == 0 and alpha.getpixel((48, 80)) == 255  # background, body
    assert colour_distance(on_white(webp), expected(on_white(rgba), 96)) < TOLERANCE


# -- Refused: initials, and a log line that says why ----------------------------------

async def initials_with_reason(client: Client, upn: str, caplog: pytest.LogCaptureFixture,
                               size: int = 96) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="avatarproxy"):
        status, headers, body = await get(client, f"/avatar/{upn}/{size}")
    assert (status, headers["X-Avatar-Source"]) == (200, "initials")
    assert headers["Cache-Control"] == "public, max-age=60"  # not cached as "no photo"
    assert decode(body).size == (size, size)
    return [r.getMessage() for r in caplog.records if r.name.startswith("avatarproxy")]


async def test_heic_is_refused_with_initials_logged_once_per_photo_version(
        make_client: MakeClient, fake_graph: Any, person: Callable[..., str],
        caplog: pytest.LogCaptureFixture) -> None:
    upn = person("heic", {(ENTRA_SIDE, ENTRA_SIDE): heic_like()}, "image/heic")
    client = await make_client(cache__metadata_ttl_seconds=1)
    for size in (96, 48, 96):  # refused bytes are not cached: each miss downloads them
        lines = await initials_with_reason(client, upn, caplog, size)
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 1, lines
    assert "HEIC is not a photo format we decode" in refusals[0]
    # The person uploads another HEIC: a new version, worth one more line.
    fake_graph.graph.set_raw_photo(upn, RawPhoto({(ENTRA_SIDE, ENTRA_SIDE): heic_like()},
                                                 "image/heic"))
    await asyncio.sleep(1.1)  # the metadata goes stale; the next request refreshes it
    for _ in range(50):
        lines = await initials_with_reason(client, upn, caplog)
        if len([line for line in lines if "refused" in line]) > 1:
            break
        await asyncio.sleep(0.02)
    assert len([line for line in lines if "refused" in line]) == 2, lines


async def test_truncated_scan_is_refused_with_initials_and_the_reason(
        make_client: MakeClient, person: Callable[..., str],
        caplog: pytest.LogCaptureFixture) -> None:
    whole = encode(photo_of(LOOKS[0], ENTRA_SIDE), quality=90)
    upn = person("truncated", {(ENTRA_SIDE, ENTRA_SIDE): truncated_scan(whole)})
    lines = await initials_with_reason(await make_client(), upn, caplog)
    assert any("truncated" in line for line in lines), lines
