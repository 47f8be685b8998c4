"""Plain tiles: exact-size PNGs of one colour, made without drawing."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from avatarproxy import tiles


@pytest.mark.parametrize("size", [1, 7, 8, 9, 161, 625, 1024])
def test_a_tile_is_a_png_of_exactly_its_size_in_one_colour(size: int) -> None:
    with Image.open(io.BytesIO(tiles.png(size, (11, 106, 11)))) as image:
        assert (image.format, image.size) == ("PNG", (size, size))
        rgb = image.convert("RGB")
        assert rgb.getcolors() == [(size * size, (11, 106, 11))]


def test_tiles_of_every_size_cost_next_to_nothing_once_made() -> None:
    for size in range(1, 1025):
        tiles.png(size, (0, 0, 0))
    began = time.perf_counter()
    for size in range(1, 1025):
        tiles.png(size, (164, 38, 44))
    # About 2 us each here; a drawn 1024 px PNG takes milliseconds.
    assert time.perf_counter() - began < 0.5
