"""Only the raster formats Graph stores are decoded; Pillow's bomb limit is ours."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from avatarproxy.errors import InvalidImage
from avatarproxy.imaging import MAX_SOURCE_PIXELS, image_dimensions, render_photo


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP"])
def test_the_formats_graph_stores_are_decoded(fmt: str) -> None:
    assert image_dimensions(_encoded(fmt)) == (64, 64)
    assert Image.open(io.BytesIO(render_photo(_encoded(fmt), 48, "png"))).size == (48, 48)


@pytest.mark.parametrize("fmt", ["TIFF", "AVIF", "ICO", "TGA", "PPM", "PCX"])
def test_other_formats_pillow_could_read_are_refused(fmt: str) -> None:
    data = _encoded(fmt)
    with pytest.raises(InvalidImage):
        image_dimensions(data)
    with pytest.raises(InvalidImage):
        render_photo(data, 48, "png")


def test_postscript_is_never_handed_to_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    with pytest.raises(InvalidImage):
        render_photo(eps, 48, "png")


def test_pillow_bomb_limit_is_set_explicitly_above_our_own() -> None:
    assert Image.MAX_IMAGE_PIXELS == 2 * MAX_SOURCE_PIXELS


@pytest.mark.parametrize(("data", "named"), [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200), "HEIC"),
    (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + bytes(200), "HEIC"),
    (_encoded("AVIF"), "AVIF"),
    (_encoded("TIFF"), "TIFF"),
    (b"<html><body>Sign in</body></html>", "markup"),
])
def test_a_refused_format_is_named_in_the_reason(data: bytes, named: str) -> None:
    with pytest.raises(InvalidImage, match=f"^{named}.* is not a photo format we decode"):
        render_photo(data, 48, "png")
