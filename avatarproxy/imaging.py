"""Photo pixel work: decode, orient, crop, resize and encode; the output formats.

Everything here is synchronous and CPU-bound (``service`` runs it in a thread
pool) and knows nothing of HTTP, caches or configuration files. It owns the
output formats and their encoder settings, ``RENDERER_VERSION``, and the
decompression-bomb guard; ``initials`` draws the letters with the same encoders.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from PIL import Image, ImageCms, ImageMath, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from . import metrics
from .cjk import CHINESE_GLYPHS, HAN_NAMES
from .errors import InvalidImage
from .options import option, settings


@settings("avatar")
class AvatarSettings:
    max_size: int = option(1024, "Largest size a client may request, in pixels.", minimum=1)
    default_format: str = option(
        "jpeg",
        "Format of photos for clients whose Accept lists neither AVIF nor WebP.",
        choices=("jpeg", "png", "webp", "avif"))
    extra_fonts: tuple[str, ...] = option(
        (),
        "Font files for initials in scripts the bundled fonts lack (Thai, Devanagari...), "
        "tried before avatar.cjk_font.")
    cjk_font: str = option(
        "auto",
        "Font file for Chinese, Japanese and Korean initials (a .ttc collection: each "
        "language's glyph forms); auto: Debian's Noto Sans CJK Bold if installed (the "
        "container image has it); empty: none, such names get the UPN's letters.")
    han_names: str = option(
        "auto",
        "Initials of names in Chinese characters alone: chinese (the given name, the last two "
        "characters), japanese (the family name), auto (japanese when the display name has a "
        "space between the two).", choices=HAN_NAMES)
    chinese_glyphs: str = option(
        "mainland",
        "Whose glyph forms Chinese initials are drawn in (the characters are never "
        "converted): mainland (Simplified Chinese), taiwan or hongkong (Traditional).",
        choices=tuple(CHINESE_GLYPHS))
    svg_title: bool = option(
        False,
        "Write the display name into the <title> of SVG initials (read by screen readers); "
        "false: the initials. Anyone who can reach the service (unsigned URLs) can then "
        "turn addresses into names.")

# Bump whenever the bytes produced for the same input change (encoder settings,
# filters, fonts, layout; here or in ``initials``): it is part of every ETag and cache key.
RENDERER_VERSION = "2"  # 2: bicubic resampling (was Lanczos), issue 14

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

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_WHITE = (255, 255, 255)


def image_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; ``InvalidImage`` if not an image."""
    with _open(data) as im:
        return im.size


def render_photo(data: bytes, size: int, fmt: str, *,
                 max_pixels: int = MAX_SOURCE_PIXELS) -> bytes:
    """A square, oriented, sRGB, metadata-free ``fmt`` of exactly ``size`` px a side
    (a smaller source is scaled up: see ``sizing.FetchPlan``)."""
    pil_format, params = encoder(_PHOTO_ENCODERS, fmt)
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
    body = encode(square, pil_format, params)
    metrics.imaging("encode", metrics.since(start))
    return body


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
    """The centre square at ``size``, resampled bicubic.

    Resampling is most of a large render's time (600 from 648 px: three
    quarters), and bicubic's kernel is two thirds of Lanczos's: a fifth less
    work, with no visible loss at the sizes pages show (SSIM against
    Lanczos's output: docs/performance.md, "Quality").
    """
    side = min(im.size)
    left, top = (im.width - side) / 2, (im.height - side) / 2
    return im.resize((size, size), Image.Resampling.BICUBIC,
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


def encoder(table: Mapping[str, tuple[str, Mapping[str, int | bool]]],
            fmt: str) -> tuple[str, Mapping[str, int | bool]]:
    """The Pillow format and settings for ``fmt`` in ``table``; ValueError if it has none."""
    try:
        return table[fmt]
    except KeyError:
        raise ValueError(f"unsupported format {fmt!r}; expected one of {sorted(table)}") from None


def encode(im: Image.Image, pil_format: str, params: Mapping[str, int | bool]) -> bytes:
    """``im`` as ``pil_format`` bytes, without any of the source's metadata."""
    # Savers fall back to im.info for comments and ICC profiles; clearing it
    # (and passing no exif/xmp) keeps the source's metadata out of the output.
    im.info = {}
    buf = io.BytesIO()
    im.save(buf, pil_format, **params)
    return buf.getvalue()
