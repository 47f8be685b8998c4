"""Photos a fake tenant holds: synthetic portraits, exact bytes, the sizes Graph offers.

``portrait`` draws a deterministic test photo; ``RawPhoto`` serves bytes exactly
as Graph stored them (lies included); ``available_sizes`` is which sizes Graph
offers for a master photo (every HD size up to an Exchange photo's side, or
an Entra-only photo's own dimensions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from PIL import Image, ImageDraw

HD_SIZES = (48, 64, 96, 120, 240, 360, 432, 504, 648)


def available_sizes(photo: Image.Image | None) -> list[tuple[int, int]]:
    """The sizes Graph offers for a master photo, smallest first.

    A square master of an HD side is an Exchange photo: every HD size up to
    its side. Anything else is an Entra-only photo: only its own dimensions.
    """
    if photo is None:
        return []
    width, height = photo.size
    if width == height and width in HD_SIZES:
        return [(side, side) for side in HD_SIZES if side <= width]
    return [(width, height)]


@dataclass(frozen=True, eq=False)
class RawPhoto:
    """A photo served as exact bytes, as Graph stored them (lies included),
    instead of the fake's own JPEG of ``FakePerson.photo``.

    ``bodies`` holds one body per available size (``(648, 648)``: ``/photos/
    648x648/$value``; the largest is also ``/photo/$value``). ``chunked`` sends
    them with ``Transfer-Encoding: chunked`` in several chunks and no
    ``Content-Length``, as a streaming front end does.
    """

    bodies: Mapping[tuple[int, int], bytes]
    content_type: str = "image/jpeg"
    chunked: bool = False

    def response(self, width: int, height: int) -> web.Response:
        body = self.bodies[(width, height)]
        if not self.chunked:
            return web.Response(body=body, content_type=self.content_type)
        # A body of unknown length: aiohttp sends each piece as its own chunk.
        return web.Response(body=_pieces(body), content_type=self.content_type)


_CHUNK_BYTES = 4096


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), _CHUNK_BYTES):
        yield body[start:start + _CHUNK_BYTES]


def portrait(width: int, height: int, top: str, bottom: str, accent: str) -> Image.Image:
    """A synthetic photo: a vertical gradient, a head and shoulders, a white
    top-left corner mark (so a flip or a bad crop shows). Deterministic."""
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), bottom),
                            Image.new("RGB", (width, height), top), mask)
    draw = ImageDraw.Draw(image)
    side, cx = min(width, height), width / 2
    draw.ellipse((cx - side * 0.17, height * 0.2, cx + side * 0.17, height * 0.2 + side * 0.34),
                 fill=accent)
    draw.ellipse((cx - side * 0.36, height * 0.62, cx + side * 0.36, height * 0.62 + side * 0.7),
                 fill=accent)
    draw.rectangle((0, 0, max(1, width // 10), max(1, height // 10)), fill="white")
    return image
