"""Plain tiles: a square PNG of one colour, at any size, in microseconds.

The answer of last resort for large sizes (past a load cap, or to a client
over its rate), where even the quick initials cost milliseconds of the event
loop: a square of 1024 px is a million pixels to draw and compress. A tile
is a 1-bit palette PNG whose pixel data (every pixel index 0) depends on the
size alone and is compressed once per size; the colour is its one palette
entry. There are at most ``avatar.max_size`` sizes, so a flood of them costs
a bounded amount of work, once.
"""

from __future__ import annotations

import functools
import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(size: int, colour: tuple[int, int, int]) -> bytes:
    """A ``size`` x ``size`` PNG of ``colour``."""
    return b"".join((_SIGNATURE, _header(size), _palette(colour), _pixels(size), _END))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


_END = _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=2048)
def _header(size: int) -> bytes:
    # Bit depth 1, colour type 3 (palette), deflate, adaptive filters, no interlace.
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 1, 3, 0, 0, 0))


@functools.lru_cache(maxsize=256)
def _palette(colour: tuple[int, int, int]) -> bytes:
    return _chunk(b"PLTE", bytes(colour))


@functools.lru_cache(maxsize=2048)  # ~200 bytes each at 1024 px
def _pixels(size: int) -> bytes:
    # Each row: filter type 0, then one bit a pixel, all index 0.
    return _chunk(b"IDAT", zlib.compress(bytes((1 + (size + 7) // 8) * size), 9))
