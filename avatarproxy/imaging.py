"""Pixel work: decode, orient, crop, resize and encode photos; draw initials.

Everything here is synchronous and CPU-bound (``service`` runs it in a thread
pool) and knows nothing of HTTP, caches or configuration files. It owns the
output formats and their encoder settings, the decompression-bomb guard and
the bundled font.
"""

from __future__ import annotations

import copy
import functools
import io
import struct
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError  # type: ignore[import-untyped]
from PIL import (
    Image,
    ImageCms,
    ImageDraw,
    ImageFont,
    ImageMath,
    ImageOps,
    UnidentifiedImageError,
    features,
)
from PIL.JpegImagePlugin import JpegImageFile

from . import metrics
from .errors import ConfigError, InvalidImage

# Bump whenever the bytes produced for the same input change (encoder settings,
# filters, fonts, layout): it is part of every ETag and cache key.
RENDERER_VERSION = "1"

CONTENT_TYPES: dict[str, str] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "svg": "image/svg+xml",  # drawn by avatarproxy.svg, listed here with the others
}

# A 648x648 Entra photo is 420k pixels; this leaves room for large uploads
# while refusing a few-KB file that claims to inflate to gigabytes.
MAX_SOURCE_PIXELS = 40_000_000
# Pillow's own guard, set explicitly rather than left to its default: it warns
# above this and refuses above twice this when reading the header. Our check
# (render_photo) refuses above MAX_SOURCE_PIXELS first, on the header too.
Image.MAX_IMAGE_PIXELS = 2 * MAX_SOURCE_PIXELS

# What Graph stores, nothing more: Pillow can also open EPS (Ghostscript),
# TIFF (a zoo of codecs) and more, none of which a profile photo needs.
_SOURCE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")

# Pillow and its plugins signal bad input through all of these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)

# AVIF speed 8 keeps a 96px encode around 5 ms instead of ~13 ms at the default.
_PHOTO_ENCODERS: dict[str, tuple[str, Mapping[str, int | bool]]] = {
    "jpeg": ("JPEG", {"quality": 85, "optimize": True}),
    "png": ("PNG", {}),
    "webp": ("WEBP", {"quality": 80}),
    "avif": ("AVIF", {"quality": 65, "speed": 8}),
}
# Initials are flat colour and sharp text: lossy codecs would smear them.
_INITIALS_ENCODERS: dict[str, tuple[str, Mapping[str, int | bool]]] = {
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True}),
}

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_WHITE = (255, 255, 255)
_DARK = (24, 24, 24)


def image_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; ``InvalidImage`` if not an image."""
    with _open(data) as im:
        return im.size


def render_photo(data: bytes, size: int, fmt: str, *,
                 max_pixels: int = MAX_SOURCE_PIXELS) -> bytes:
    """A square, oriented, sRGB, metadata-free ``fmt`` of exactly ``size`` px a side
    (a smaller source is scaled up: see ``sizing.FetchPlan``)."""
    pil_format, params = _encoder(_PHOTO_ENCODERS, fmt)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    start = time.perf_counter()
    with _open(data) as im:
        _load(im, size, max_pixels)
        metrics.imaging("decode", metrics.since(start))
        start = time.perf_counter()
        try:
            square = _square(_resizable(im), size)
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"cannot decode image: {exc}") from exc
    square = _to_srgb(_oriented(square))
    if fmt == "jpeg" and square.mode == "RGBA":
        square = _flatten(square, _WHITE)
    metrics.imaging("resize", metrics.since(start))
    start = time.perf_counter()
    body = _encode(square, pil_format, params)
    metrics.imaging("encode", metrics.since(start))
    return body


def verify_photo(data: bytes, *, max_pixels: int = MAX_SOURCE_PIXELS) -> tuple[int, int]:
    """Decode ``data`` through (JPEG at 1/8 scale): its (width, height), or
    ``InvalidImage`` unless it is usable.

    Run before a downloaded photo is cached as a source for other sizes, so a
    corrupt or truncated body is never kept.
    """
    with _open(data) as im:
        size = im.size  # before draft mode scales it
        _load(im, 8, max_pixels)
        return size


def _load(im: Image.Image, size: int, max_pixels: int) -> None:
    """Decode, refusing bombs by the header's size first; ``InvalidImage`` on bad data."""
    width, height = im.size
    if width * height > max_pixels:
        raise InvalidImage(f"{width}x{height} exceeds {max_pixels} pixels")
    if isinstance(im, JpegImageFile):
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale, averaging whole DCT
        # blocks: several times faster, and it stays at least `size` a side.
        im.draft("RGB", (size, size))
    try:
        im.load()
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"cannot decode image: {exc}") from exc


@contextmanager
def _open(data: bytes) -> Iterator[Image.Image]:
    try:
        im = Image.open(io.BytesIO(data), formats=_SOURCE_FORMATS)
    except UnidentifiedImageError as exc:
        # Pillow's message names only a BytesIO: say what arrived instead.
        raise InvalidImage(f"{_identify(data)} is not a photo format we decode "
                           f"(only {', '.join(_SOURCE_FORMATS)})") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"not an image: {exc}") from exc
    with im:
        yield im


# ISO media brands (the ``ftyp`` box) of formats phones save that we do not decode.
_ISO_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
               b"hevc": "HEIC", b"avif": "AVIF", b"avis": "AVIF", b"mif1": "HEIF",
               b"msf1": "HEIF"}


def _identify(data: bytes) -> str:
    """A name for bytes Pillow would not open, for the log; no decoder is asked."""
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        brands = [data[8:12]] + [data[i:i + 4] for i in range(16, min(size, 64), 4)]
        names = {_ISO_BRANDS[b] for b in brands if b in _ISO_BRANDS}
        # "mif1" (any HEIF) is listed next to the brand that says what is inside.
        return next((n for n in ("HEIC", "AVIF", "HEIF") if n in names), "ISO media")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:5] == b"%PDF-" or data[:4] == b"%!PS":
        return "PDF or PostScript"
    if data.lstrip()[:1] == b"<":
        return "markup (HTML, XML or SVG)"
    return "unrecognised data" if data else "an empty body"


def _resizable(im: Image.Image) -> Image.Image:
    """RGB, RGBA, L or CMYK: modes that resample well and keep any ICC meaning."""
    if im.mode.startswith("I;16"):
        im = _eight_bit_grey(im)
    if im.has_transparency_data:
        return im if im.mode == "RGBA" else im.convert("RGBA")
    return im if im.mode in ("RGB", "L", "CMYK") else im.convert("RGB")


def _eight_bit_grey(im: Image.Image) -> Image.Image:
    """A 16-bit grey PNG as L (LA if it has a transparent grey level), scaled:
    Pillow's own conversion clips every level above 255, so the photo turned white."""
    wide = im.convert("I")
    grey = wide.point(lambda v: v / 257).convert("L")
    transparent = grey.info.pop("transparency", None)
    if not isinstance(transparent, int):
        return grey
    opaque: Image.Image = ImageMath.lambda_eval(
        lambda a: (a["wide"] != transparent) * 255, wide=wide)
    return Image.merge("LA", (grey, opaque.convert("L")))


def _square(im: Image.Image, size: int) -> Image.Image:
    side = min(im.size)
    left, top = (im.width - side) / 2, (im.height - side) / 2
    return im.resize((size, size), Image.Resampling.LANCZOS,
                     box=(left, top, left + side, top + side), reducing_gap=3.0)


def _oriented(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; unreadable EXIF leaves the pixels as stored.

    Done on the small square: cheaper, and a centred square crop commutes
    with rotation and mirroring.
    """
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _to_srgb(im: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile, if any, then drop it.

    Phones save Display P3 and print tools CMYK profiles; stripping the profile
    without converting would shift the colours.
    """
    mode = "RGBA" if im.mode == "RGBA" else "RGB"
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(im, source, _SRGB, outputMode=mode)
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile is not worth refusing the photo over
    return im if im.mode == mode else im.convert(mode)


def _flatten(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    flat = Image.new("RGB", im.size, background)
    flat.paste(im, mask=im.getchannel("A"))
    return flat


def _encoder(table: Mapping[str, tuple[str, Mapping[str, int | bool]]],
             fmt: str) -> tuple[str, Mapping[str, int | bool]]:
    try:
        return table[fmt]
    except KeyError:
        raise ValueError(f"unsupported format {fmt!r}; expected one of {sorted(table)}") from None


def _encode(im: Image.Image, pil_format: str, params: Mapping[str, int | bool]) -> bytes:
    # Savers fall back to im.info for comments and ICC profiles; clearing it
    # (and passing no exif/xmp) keeps the source's metadata out of the output.
    im.info = {}
    buf = io.BytesIO()
    im.save(buf, pil_format, **params)
    return buf.getvalue()


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
        pil_format, params = _encoder(_INITIALS_ENCODERS, fmt)
        start = time.perf_counter()
        im = Image.new("RGB", (size, size), background)
        for text in candidates:
            index = self._font_index(text)
            if index is not None and text.strip():
                with self._lock:
                    font = self._fitted_font(index, text, size)
                    _draw_centred(im, text, font, text_colour(background))
                break
        body = _encode(im, pil_format, params)
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
        body = _encode(im, "PNG", {"compress_level": 1})
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
