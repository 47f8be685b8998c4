"""Gravatar's default images (``d=``), drawn from the hash alone: ``mp``, ``identicon``, ``blank``.

A hash nobody in the directory has (or a person without a photo, when the tool
asked for ``mp``, ``identicon`` or ``blank``) gets one of these: no name is
known, so no initials, and nothing about the hash is looked up. ``mp`` is a
neutral silhouette, the same for every hash; ``identicon`` a symmetric 5x5
pattern in a colour, both taken from the hash's bytes, so a hash always gets
the same picture; ``blank`` is transparent. Pure Pillow work, run in the image
pool; lossless PNG or WebP, like initials (JPEG when the URL says ``.jpg``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from PIL import Image, ImageDraw

from .imaging import encode, encoder

KINDS = ("mp", "identicon", "blank")
# Bump when the pictures drawn for the same request change (it is in their ETags).
VERSION = "1"
MP_BACKGROUND = (200, 204, 209)
_MP_FIGURE = (243, 244, 246)
_IDENTICON_BACKGROUND = (240, 240, 240)
_MASTER = 512  # the silhouette is drawn once at this size, then scaled
_ENCODERS: dict[str, tuple[str, Mapping[str, int | bool]]] = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True}),
    "jpeg": ("JPEG", {"quality": 90}),  # for .jpg URLs; never blank (no transparency)
}


def draw(kind: str, digest: bytes, size: int, fmt: str) -> bytes:
    """``kind`` at ``size`` x ``size`` in ``fmt`` (``png``, ``webp``, or ``jpeg`` for
    ``mp`` and ``identicon``)."""
    if kind == "identicon":
        image = identicon(digest, size)
    elif kind == "blank":
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    else:
        image = _silhouette().resize((size, size), Image.Resampling.LANCZOS)
    return encode(image, *encoder(_ENCODERS, fmt))


@functools.lru_cache(maxsize=1)
def _silhouette() -> Image.Image:
    """Head and shoulders, drawn at twice ``_MASTER`` and scaled down: smooth edges."""
    side = _MASTER * 2
    image = Image.new("RGB", (side, side), MP_BACKGROUND)
    pen = ImageDraw.Draw(image)
    pen.ellipse((side * 0.33, side * 0.17, side * 0.67, side * 0.51), fill=_MP_FIGURE)
    pen.ellipse((side * 0.15, side * 0.58, side * 0.85, side * 1.28), fill=_MP_FIGURE)
    return image.resize((_MASTER, _MASTER), Image.Resampling.LANCZOS)


def identicon(digest: bytes, size: int) -> Image.Image:
    """Five columns mirrored about the middle, a cell on for each set bit of the digest,
    in a colour from its first bytes; a margin of half a cell."""
    hue = int.from_bytes(digest[:2], "big") / 65536
    colour = _hsl(hue, 0.55, 0.5)
    image = Image.new("RGB", (size, size), _IDENTICON_BACKGROUND)
    pen = ImageDraw.Draw(image)
    cell = size / 6
    bits = int.from_bytes(digest[2:4], "big")
    for row in range(5):
        for column in range(3):
            if not bits >> (row * 3 + column) & 1:
                continue
            for x in {column, 4 - column}:
                left, top = cell / 2 + x * cell, cell / 2 + row * cell
                pen.rectangle((round(left), round(top), round(left + cell) - 1,
                               round(top + cell) - 1), fill=colour)
    return image


def _hsl(hue: float, saturation: float, lightness: float) -> tuple[int, int, int]:
    chroma = (1 - abs(2 * lightness - 1)) * saturation

    def channel(n: int) -> int:
        k = (n + hue * 12) % 12
        value = lightness - chroma / 2 * max(-1.0, min(k - 3, 9 - k, 1.0))
        return round(value * 255)

    return channel(0), channel(8), channel(4)
