"""Which format a response is encoded in: ``?format=`` first, else ``Accept``.

Pure functions. The web layer decides one format for a photo and one for
initials before asking the service, because only the service learns which of
the two the person gets.

Photos: AVIF or WebP when ``Accept`` lists them, else ``avatar.default_format``
(JPEG). Measured with ``bench/formats.py`` (Pillow, 2 cores): at 48-96 px WebP
is as small as AVIF or smaller (AVIF's container costs ~300 bytes) and encodes
2-3x faster; from ~160 px AVIF is 15-30% smaller on photographs. Encoded bytes
are cached per photo version, size and format, so the encode cost is paid
once; the bytes are paid on every transfer. Hence: WebP below
``AVIF_MIN_SIZE``, AVIF from there up, when the client accepts both.

Initials are flat colour and sharp text: lossless WebP when accepted, else
PNG, never a lossy codec; ``?format=svg`` gives them as vector.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .errors import BadRequest

FORMATS = ("jpeg", "png", "webp", "avif", "svg")
AVIF_MIN_SIZE = 160

_MEDIA_TYPES = {"image/avif": "avif", "image/webp": "webp"}
_Q = re.compile(r";\s*q\s*=\s*([^;\s]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class OutputFormats:
    """The format for each possible source, and whether ``Accept`` chose it."""

    photo: str
    initials: str
    varies: bool = True  # the answer depends on Accept: send Vary: Accept


def parse_format(value: str | None) -> str | None:
    """``?format=``: one of ``FORMATS`` or absent."""
    if value is None:
        return None
    fmt = value.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMATS:
        raise BadRequest("format must be one of " + ", ".join(FORMATS))
    return fmt


def accepted(accept: str) -> set[str]:
    """Our modern formats that ``Accept`` lists by name with a non-zero q.

    ``image/*`` and ``*/*`` do not count: old browsers send them and cannot
    decode AVIF.
    """
    found: set[str] = set()
    for item in accept.split(","):
        media_type, _, params = item.strip().partition(";")
        fmt = _MEDIA_TYPES.get(media_type.strip().lower())
        if fmt is None:
            continue
        match = _Q.search(";" + params)
        try:
            q = float(match.group(1)) if match else 1.0
        except ValueError:
            q = 0.0
        if q > 0:
            found.add(fmt)
    return found


def choose(forced: str | None, accept: str, size: int, default_photo: str) -> OutputFormats:
    """The photo and initials formats for one request."""
    return _choose(forced, accept, size >= AVIF_MIN_SIZE, default_photo)


@functools.lru_cache(maxsize=1024)  # browsers send a handful of distinct Accept headers
def _choose(forced: str | None, accept: str, large: bool, default_photo: str) -> OutputFormats:
    if forced is not None and forced != "svg":
        # Lossy requests still get lossless initials: text must stay sharp.
        initials = forced if forced in ("png", "webp") else "png"
        return OutputFormats(forced, initials, varies=False)
    can = accepted(accept)
    photo = default_photo
    if "avif" in can and ("webp" not in can or large):
        photo = "avif"
    elif "webp" in can:
        photo = "webp"
    if forced == "svg":
        # SVG cannot improve a photo: people with one get it in the negotiated format.
        return OutputFormats(photo, "svg")
    return OutputFormats(photo, "webp" if "webp" in can else "png")
