"""Initials drawn as pixels: fonts, glyph coverage, centring and the text colour.

The bundled font comes first, then any the operator adds (``avatar.extra_fonts``),
then the CJK font (``avatar.cjk_font``: the container image's Noto Sans CJK);
a name is drawn with the first font that covers every letter of it, in the
face of its language when the font is a pan-CJK collection (Japanese,
Korean, Chinese glyph forms). Synchronous like ``imaging`` (the service runs
``render`` in the image pool); the quick twin (``InitialsRenderer.twin``,
``render_quick``) draws overload answers on the event loop. SVG initials are
``svg``'s, the plain tiles of the cheapest answer ``tiles``'s.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import struct
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont, TTLibError  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageFont, features

from . import metrics
from .errors import ConfigError
from .imaging import AvatarSettings, encode, encoder

# Initials are flat colour and sharp text: lossy codecs would smear them.
_INITIALS_ENCODERS: dict[str, tuple[str, Mapping[str, int | bool]]] = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True}),
}
_WHITE = (255, 255, 255)
_DARK = (24, 24, 24)

_BUNDLED_FONT = Path(__file__).resolve().parent / "fonts" / "DejaVuSans-Bold.ttf"
# Where Debian's fonts-noto-cjk keeps Noto Sans CJK Bold, where the container image
# (deploy/Dockerfile) puts it, and what avatar.cjk_font = "auto" uses if it is there.
DEBIAN_CJK_FONT = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
# Without raqm Pillow draws Arabic unjoined and Hebrew/Arabic left to right.
_LAYOUT = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
_TEXT_SCALE = 0.42  # font size as a share of the square
_MAX_TEXT_WIDTH = 0.8  # wider text is shrunk to fit inside the circle clients crop to
_FONT_CACHE_LIMIT = 256
# A CJK font file is ~20 MB: each FreeType face of it (one per pixel size)
# holds ~1 MB of its own, so only a few are kept; making one takes ~0.3 ms.
_LARGE_FONT_BYTES = 4 * 1024 * 1024
_LARGE_FONT_CACHE_LIMIT = 16
# The faces of a pan-CJK collection (Noto Sans CJK, Source Han Sans) by the
# last word of their family name: each draws Han characters as that language
# writes them (直, 骨, 角 differ between Japanese and Chinese).
_REGIONS: dict[str, tuple[str, ...]] = {"ja": ("JP", "J"), "ko": ("KR", "K"), "zh": ("SC", "CN"),
                                        "zh-TW": ("TC", "TW"), "zh-HK": ("HK",)}
_FONT_ERRORS = (OSError, ValueError, TTLibError, struct.error)


@dataclass(frozen=True, slots=True)
class _Font:
    """One font file: what its first face covers, and its face for each language."""

    path: Path
    coverage: frozenset[int]
    regional: tuple[tuple[str, int, frozenset[int]], ...] = ()  # (lang, face, coverage)
    large: bool = False

    def face(self, lang: str, needed: set[int]) -> int:
        """The face for ``lang`` if it covers ``needed``, else the first."""
        return next((face for region, face, coverage in self.regional
                     if region == lang and needed <= coverage), 0)


class InitialsRenderer:
    """Draws initials with the bundled font, then any operator-supplied ones, then the
    CJK font.

    Fonts are loaded by file path only: Pillow resolves a bare font name
    through system font folders, which would make output depend on the host.
    """

    def __init__(self, extra_fonts: Sequence[str | Path] = (), cjk_font: str | Path = "") -> None:
        wanted = [("avatar.extra_fonts", _BUNDLED_FONT), *(
            ("avatar.extra_fonts", Path(p)) for p in extra_fonts)]
        if cjk_font:
            wanted.append(("avatar.cjk_font", Path(cjk_font)))
        fonts: list[_Font] = []
        problems: list[str] = []
        for key, path in wanted:
            try:
                stat = path.stat()
                fonts.append(_load(path, stat.st_size, stat.st_mtime_ns,
                                   regional=key == "avatar.cjk_font"))
            except _FONT_ERRORS as exc:
                problems.append(f"{key}: cannot load {path}: {exc}")
        if problems:
            raise ConfigError(problems)
        self.font_paths: tuple[Path, ...] = tuple(font.path for font in fonts)
        self.fonts_id = _fonts_id(fonts)
        self._loaded = fonts
        self._faces: dict[tuple[int, int, int], ImageFont.FreeTypeFont] = {}
        # A FreeType face must not be used from two threads at once.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, avatar: AvatarSettings) -> InitialsRenderer:
        """``avatar.cjk_font`` ``auto``: Debian's Noto Sans CJK when it is installed."""
        cjk = avatar.cjk_font
        if cjk == "auto":
            cjk = str(DEBIAN_CJK_FONT) if DEBIAN_CJK_FONT.is_file() else ""
        return cls(avatar.extra_fonts, cjk)

    @property
    def draws_cjk(self) -> bool:
        """Whether a loaded font covers Chinese, Japanese and Korean (一, あ, 가)."""
        return self.covers("一あ가")

    def covers(self, text: str) -> bool:
        """True when one loaded font has a glyph for every character of ``text``."""
        return self._font_index(text) is not None

    def render(self, candidates: Sequence[str], background: tuple[int, int, int],
               size: int, fmt: str, lang: str = "") -> bytes:
        """The first fully covered candidate, centred on ``background``; else plain.
        ``lang`` (``zh``, ``zh-TW``, ``zh-HK``, ``ja``, ``ko``): whose glyph forms a CJK
        font draws."""
        pil_format, params = encoder(_INITIALS_ENCODERS, fmt)
        start = time.perf_counter()
        im = Image.new("RGB", (size, size), background)
        for text in candidates:
            index = self._font_index(text)
            if index is not None and text.strip():
                with self._lock:
                    font = self._fitted_font(index, text, size, lang)
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
        twin._faces = {}
        twin._lock = threading.Lock()
        return twin

    def render_quick(self, candidates: Sequence[str], background: tuple[int, int, int],
                     size: int, lang: str = "") -> bytes:
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
                _draw_centred(mask, text, self._fitted_font(index, text, size, lang), 255)
        im = Image.frombytes("P", mask.size, mask.tobytes())
        im.putpalette(_ramp(background, text_colour(background)))
        body = encode(im, "PNG", {"compress_level": 1})
        metrics.imaging("initials", metrics.since(start))
        return body

    def first_covered(self, candidates: Sequence[str]) -> str:
        """The candidate ``render`` would draw ("" if none)."""
        return next((t for t in candidates if t.strip() and self.covers(t)), "")

    def _font_index(self, text: str) -> int | None:
        needed = _needed(text)
        for index, font in enumerate(self._loaded):
            if needed <= font.coverage:
                return index
        return None

    def _fitted_font(self, index: int, text: str, size: int,
                     lang: str) -> ImageFont.FreeTypeFont:
        face = self._loaded[index].face(lang, _needed(text))
        px = max(1, round(size * _TEXT_SCALE))
        font = self._font(index, face, px)
        left, _, right, _ = font.getbbox(text, anchor="ls")
        limit = size * _MAX_TEXT_WIDTH
        if right - left > limit:
            font = self._font(index, face, max(1, int(px * limit / (right - left))))
        return font

    def _font(self, index: int, face: int, px: int) -> ImageFont.FreeTypeFont:
        font = self._faces.get((index, face, px))
        if font is None:
            large = self._loaded[index].large
            kept = [key for key in self._faces if self._loaded[key[0]].large == large]
            if len(kept) >= (_LARGE_FONT_CACHE_LIMIT if large else _FONT_CACHE_LIMIT):
                for key in kept:
                    del self._faces[key]
            font = ImageFont.truetype(self._loaded[index].path, px, index=face,
                                      layout_engine=_LAYOUT)
            self._faces[(index, face, px)] = font
        return font


@functools.lru_cache(maxsize=16)
def _load(path: Path, size: int, mtime_ns: int, *, regional: bool) -> _Font:
    """``path`` proven drawable, with its coverage (and with ``regional``, the faces of
    a pan-CJK collection by language). Kept for the process while the file is the
    same (``size``, ``mtime_ns``): reading a CJK font's takes ~0.2 s, and start-up
    checks, the server and each worker load the fonts."""
    faces = _regional_faces(path) if regional else {}
    by_face: dict[int, frozenset[int]] = {}
    for face in sorted({0, *faces.values()}):
        covered = _codepoints(path, face)
        # The regions of one collection usually cover the same characters: keep one set.
        by_face[face] = next((known for known in by_face.values() if known == covered), covered)
    return _Font(path, by_face[0],
                 tuple((lang, face, by_face[face]) for lang, face in sorted(faces.items())),
                 large=size > _LARGE_FONT_BYTES)


def _regional_faces(path: Path) -> dict[str, int]:
    """A font collection's face for each language its family names end with."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"ttcf":
            return {}
    faces: dict[str, int] = {}
    with TTCollection(path, lazy=True) as collection:
        for index, font in enumerate(collection.fonts):
            words = str(font["name"].getDebugName(1) or "").split()
            if not words or "Mono" in words:
                continue
            for lang, regions in _REGIONS.items():
                if words[-1] in regions:
                    faces.setdefault(lang, index)
    return faces


def _codepoints(path: Path, face: int = 0) -> frozenset[int]:
    # Pillow proves FreeType can render the face; fontTools reads its cmap,
    # which Pillow does not expose. Numbered glyph names stand in for the real
    # ones: reading those would parse a CJK font's 65,535 (30 MB, 0.1 s).
    ImageFont.truetype(path, 12, index=face)
    with TTFont(path, fontNumber=face, lazy=True) as font:
        order = [f"g{n}" for n in range(font["maxp"].numGlyphs)]
        font.setGlyphOrder(order)
        cmap = font["cmap"].getBestCmap() or {}
        # A character mapped to glyph 0 is drawn as .notdef, the box.
        return frozenset(point for point, name in cmap.items() if name != order[0])


def _fonts_id(fonts: Sequence[_Font]) -> str:
    """A short name for the fonts loaded, part of initials' cache keys and ETags: adding
    a font draws some names anew."""
    parts = [f"{f.path.name}:{f.path.stat().st_size}:{[r[:2] for r in f.regional]}"
             for f in fonts[1:]]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12] if parts else ""


def _needed(text: str) -> set[int]:
    return {ord(c) for c in text if not _ignorable(c)}


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
