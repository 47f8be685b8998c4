"""Initials drawn as pixels: fonts, glyph coverage, centring and the text colour.

The bundled font comes first, then any the operator adds (``avatar.extra_fonts``);
a name is drawn with the first font that covers every letter of it. Synchronous
like ``imaging`` (the service runs ``render`` in the image pool); the quick twin
(``InitialsRenderer.twin``, ``render_quick``) draws overload answers on the event
loop. SVG initials are ``svg``'s, the plain tiles of the cheapest answer ``tiles``'s.
"""

from __future__ import annotations

import copy
import functools
import struct
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageFont, features

from . import metrics
from .errors import ConfigError
from .imaging import encode, encoder

# Initials are flat colour and sharp text: lossy codecs would smear them.
_INITIALS_ENCODERS: dict[str, tuple[str, Mapping[str, int | bool]]] = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True}),
}
_WHITE = (255, 255, 255)
_DARK = (24, 24, 24)

_BUNDLED_FONT = Path(__file__).resolve().parent / "fonts" / "DejaVuSans-Bold.ttf"
# Without raqm Pillow draws Arabic unjoined and Hebrew/Arabic left to right.
_LAYOUT = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
_TEXT_SCALE = 0.42  # font size as a share of the square
_MAX_TEXT_WIDTH = 0.8  # wider text is shrunk to fit inside the circle clients crop to
_FONT_CACHE_LIMIT = 256


class InitialsRenderer:
    """Draws initials with the bundled font, then any operator-supplied ones.

    Fonts are loaded by file path only: Pillow resolves a bare font name
    through system font folders, which would make output depend on the host.
    """

    def __init__(self, extra_fonts: Sequence[str | Path] = ()) -> None:
        paths = [_BUNDLED_FONT, *(Path(p) for p in extra_fonts)]
        coverage: list[frozenset[int]] = []
        problems: list[str] = []
        for path in paths:
            try:
                coverage.append(_codepoints(path))
            except (OSError, ValueError, TTLibError, struct.error) as exc:
                problems.append(f"avatar.extra_fonts: cannot load {path}: {exc}")
        if problems:
            raise ConfigError(problems)
        self.font_paths: tuple[Path, ...] = tuple(paths)
        self._coverage = coverage
        self._fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
        # A FreeType face must not be used from two threads at once.
        self._lock = threading.Lock()

    def covers(self, text: str) -> bool:
        """True when one loaded font has a glyph for every character of ``text``."""
        return self._font_index(text) is not None

    def render(self, candidates: Sequence[str], background: tuple[int, int, int],
               size: int, fmt: str) -> bytes:
        """The first fully covered candidate, centred on ``background``; else plain."""
        pil_format, params = encoder(_INITIALS_ENCODERS, fmt)
        start = time.perf_counter()
        im = Image.new("RGB", (size, size), background)
        for text in candidates:
            index = self._font_index(text)
            if index is not None and text.strip():
                with self._lock:
                    font = self._fitted_font(index, text, size)
                    _draw_centred(im, text, font, text_colour(background))
                break
        body = encode(im, pil_format, params)
        metrics.imaging("initials", metrics.since(start))
        return body

    def twin(self) -> InitialsRenderer:
        """The same fonts with FreeType faces (and a lock) of its own.

        For the event loop's overload answers: they must never wait for the
        lock the image pool's threads hold while they draw.
        """
        twin = copy.copy(self)
        twin._fonts = {}
        twin._lock = threading.Lock()
        return twin

    def render_quick(self, candidates: Sequence[str], background: tuple[int, int, int],
                     size: int) -> bytes:
        """What ``render`` draws, as PNG, several times cheaper (for overload answers).

        The text is drawn as a coverage mask whose 256 levels index a palette
        ramp from the background to the text colour: one byte a pixel instead
        of three, no PNG row filters, fast zlib. It looks the same as
        ``render`` (within a level of rounding); the bytes differ.
        """
        start = time.perf_counter()
        mask = Image.new("L", (size, size), 0)
        text = self.first_covered(candidates)
        index = self._font_index(text)
        if text and index is not None:
            with self._lock:
                _draw_centred(mask, text, self._fitted_font(index, text, size), 255)
        im = Image.frombytes("P", mask.size, mask.tobytes())
        im.putpalette(_ramp(background, text_colour(background)))
        body = encode(im, "PNG", {"compress_level": 1})
        metrics.imaging("initials", metrics.since(start))
        return body

    def first_covered(self, candidates: Sequence[str]) -> str:
        """The candidate ``render`` would draw ("" if none)."""
        return next((t for t in candidates if t.strip() and self.covers(t)), "")

    def _font_index(self, text: str) -> int | None:
        needed = {ord(c) for c in text if not _ignorable(c)}
        for index, cmap in enumerate(self._coverage):
            if needed <= cmap:
                return index
        return None

    def _fitted_font(self, index: int, text: str, size: int) -> ImageFont.FreeTypeFont:
        px = max(1, round(size * _TEXT_SCALE))
        font = self._font(index, px)
        left, _, right, _ = font.getbbox(text, anchor="ls")
        limit = size * _MAX_TEXT_WIDTH
        if right - left > limit:
            font = self._font(index, max(1, int(px * limit / (right - left))))
        return font

    def _font(self, index: int, px: int) -> ImageFont.FreeTypeFont:
        font = self._fonts.get((index, px))
        if font is None:
            if len(self._fonts) >= _FONT_CACHE_LIMIT:
                self._fonts.clear()
            font = ImageFont.truetype(self.font_paths[index], px, layout_engine=_LAYOUT)
            self._fonts[(index, px)] = font
        return font


def _codepoints(path: Path) -> frozenset[int]:
    # Pillow proves FreeType can render the file; fontTools reads its cmap,
    # which Pillow does not expose. fontNumber=0 picks the first face of a .ttc.
    ImageFont.truetype(path, 12)
    with TTFont(path, fontNumber=0, lazy=True) as font:
        return frozenset(font.getBestCmap() or ())


def _ignorable(char: str) -> bool:
    # Spaces and format controls (ZWJ, bidi marks) need no glyph of their own.
    return char.isspace() or unicodedata.category(char) == "Cf"


def _draw_centred(im: Image.Image, text: str, font: ImageFont.FreeTypeFont,
                  colour: tuple[int, int, int] | int) -> None:
    """Centre the ink itself: Pillow's text boxes include side bearings and
    advance widths, which leave letters like "AB" visibly off-centre."""
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    pad = int(font.size) // 2 + 1  # room for marks and overhangs outside the box
    mask = Image.new("L", (int(right - left) + 2 * pad, int(bottom - top) + 2 * pad))
    ImageDraw.Draw(mask).text((pad - left, pad - top), text, fill=255, font=font, anchor="ls")
    ink = mask.getbbox()
    if ink is None:
        return
    glyphs = mask.crop(ink)
    im.paste(colour, ((im.width - glyphs.width) // 2, (im.height - glyphs.height) // 2), glyphs)


@functools.lru_cache(maxsize=64)  # a palette of background colours, two text colours
def _ramp(background: tuple[int, int, int], ink: tuple[int, int, int]) -> tuple[int, ...]:
    """256 RGB entries from ``background`` (0) to ``ink`` (255): coverage as colour."""
    return tuple(round(b + (i - b) * level / 255)
                 for level in range(256) for b, i in zip(background, ink, strict=True))


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """White or near-black, whichever has the higher WCAG contrast ratio."""
    bg = _luminance(background)
    on_white = 1.05 / (bg + 0.05)
    on_dark = (bg + 0.05) / (_luminance(_DARK) + 0.05)
    return _WHITE if on_white >= on_dark else _DARK


def _luminance(rgb: tuple[int, int, int]) -> float:
    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
