"""Photos like people's photos, generated (no downloads): the fake Graph's
single-colour portraits are a few hundred bytes, real ones tens of KB, and
real uploads come in every encoding phones, scanners and editors produce.

Every photo here is ``demo.photos.portrait`` of one person's ``Look`` (so a
test can tell whose photo it got, and the white top-left mark shows a flip
or a rotation) with fine grain over the whole frame, which is what makes a
photograph heavy to encode and to send. Then it is stored the way a camera
or an editor would store it: rotated with an EXIF orientation, as CMYK,
grayscale, progressive, Display P3, 16-bit, with alpha, WebP, HEIC; or as a
body that lies about itself. The helpers at the end read an answer back:
mean colour per cell of a grid (whose photo, which way up, which colours)
and which corner the mark ended up in.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageColor, ImageFilter, ImageStat

from avatarproxy.demo.photos import HD_SIZES, portrait

Matrix = list[list[float]]
RGB = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Look:
    """A person's photo colours (sRGB): gradient top and bottom, head and shoulders."""

    top: str
    bottom: str
    accent: str

    def colours(self) -> tuple[str, str, str]:
        return self.top, self.bottom, self.accent


def realistic_portrait(width: int, height: int, top: str, bottom: str, accent: str,
                       seed: int = 0) -> Image.Image:
    """``demo.photos.portrait`` with grain and blur: at 240 px about 30 KB as JPEG q90."""
    base = portrait(width, height, top, bottom, accent).filter(ImageFilter.GaussianBlur(1))
    rng = random.Random(seed)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    return Image.blend(base, Image.merge("RGB", (grain, grain, grain)), 0.12)


def photo_of(look: Look, width: int, height: int | None = None, seed: int = 0) -> Image.Image:
    """The person's upright photo in sRGB: what the service should end up showing."""
    return realistic_portrait(width, height or width, *look.colours(), seed=seed)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# -- Exchange photos: one body per HD size ------------------------------------

# Exchange re-encodes each HD size itself; at q75 the grainy 648 px portrait is
# tens of KB, as real ones are (q90 would be ~150 KB).
HD_QUALITY = 75


def hd_bodies(look: Look, side: int = 648, seed: int = 0) -> dict[tuple[int, int], bytes]:
    """JPEGs of every HD size up to ``side``, each encoded at its own size."""
    master = photo_of(look, side, seed=seed)
    return {(s, s): encode(master.resize((s, s), Image.Resampling.LANCZOS), quality=HD_QUALITY)
            for s in HD_SIZES if s <= side}


# -- Entra-only originals: any dimensions, up to Graph's 4 MB upload limit -----

GRAPH_UPLOAD_LIMIT = 4 * 1024 * 1024


@functools.lru_cache(maxsize=4)  # a 4000x3000 takes about a second to make
def large_original(look: Look, width: int = 4000, height: int = 3000, *, orientation: int = 1,
                   progressive: bool = False) -> bytes:
    """A camera's JPEG, ``width`` x ``height`` as stored, just under Graph's 4 MB
    limit (the quality is chosen to fit). With an ``orientation`` of 5 to 8 the
    upright photo is ``height`` x ``width``."""
    upright = (photo_of(look, height, width) if orientation >= 5
               else photo_of(look, width, height))
    for quality in (92, 88, 84, 80, 75, 70):
        body = with_orientation(upright, orientation, quality=quality, progressive=progressive)
        if len(body) <= GRAPH_UPLOAD_LIMIT:
            return body
    raise AssertionError("no quality brings the original under the upload limit")


# -- EXIF orientation -----------------------------------------------------------

# What a camera stores for each orientation so that a viewer applying the tag
# shows the upright picture: the inverse of the viewer's transform.
_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # the viewer rotates 90 clockwise (ROTATE_270) back
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def with_orientation(upright: Image.Image, orientation: int, fmt: str = "JPEG",
                     **params: object) -> bytes:
    """``upright`` stored rotated or mirrored, with the EXIF tag that undoes it."""
    method = _STORED[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "CorpusCam"
    return encode(stored, fmt, exif=exif, **params)


# -- Display P3 -----------------------------------------------------------------

_P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
_SRGB_PRIMARIES = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
_D65 = (0.3127, 0.3290)
_D50_XYZ = (0.9642, 1.0, 0.8249)  # the ICC profile connection space's white
_BRADFORD = [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _apply(m: Matrix, v: Sequence[float]) -> list[float]:
    return [sum(m[i][k] * v[k] for k in range(3)) for i in range(3)]


def _diagonal(v: Sequence[float]) -> Matrix:
    return [[v[i] if i == j else 0.0 for j in range(3)] for i in range(3)]


def _inverse(m: Matrix) -> Matrix:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    adjugate = [[e * i - f * h, c * h - b * i, b * f - c * e],
                [f * g - d * i, a * i - c * g, c * d - a * f],
                [d * h - e * g, b * g - a * h, a * e - b * d]]
    return [[v / det for v in row] for row in adjugate]


def _xyz(xy: tuple[float, float]) -> list[float]:
    x, y = xy
    return [x / y, 1.0, (1 - x - y) / y]


def _rgb_to_xyz(primaries: Sequence[tuple[float, float]]) -> Matrix:
    """Linear RGB -> XYZ (D65, Y of white = 1) from the primaries' chromaticities."""
    unscaled = [[_xyz(p)[i] for p in primaries] for i in range(3)]  # a column per primary
    scale = _apply(_inverse(unscaled), _xyz(_D65))  # so that R = G = B = 1 is the white
    return _mul(unscaled, _diagonal(scale))


def _to_d50(m: Matrix) -> Matrix:
    """Bradford-adapt an RGB -> XYZ(D65) matrix to the PCS white, as ICC wants."""
    source, target = _apply(_BRADFORD, _xyz(_D65)), _apply(_BRADFORD, _D50_XYZ)
    gain = _diagonal([t / s for t, s in zip(target, source, strict=True)])
    return _mul(_mul(_inverse(_BRADFORD), _mul(gain, _BRADFORD)), m)


def _decode_trc(v: float) -> float:  # sRGB and Display P3 share this curve
    return v / 12.92 if v <= 0.04045 else float(((v + 0.055) / 1.055) ** 2.4)


def _encode_trc(v: float) -> float:
    v = min(1.0, max(0.0, v))
    return v * 12.92 if v <= 0.0031308 else float(1.055 * v ** (1 / 2.4) - 0.055)


def _convert(rgb: Sequence[int], source: Matrix, target: Matrix) -> RGB:
    linear = [_decode_trc(c / 255) for c in rgb]
    r, g, b = (round(_encode_trc(c) * 255)
               for c in _apply(_mul(_inverse(target), source), linear))
    return r, g, b


def srgb_to_p3(rgb: Sequence[int]) -> RGB:
    """The Display P3 encoding of an sRGB colour (plain matrix maths, no ICC)."""
    return _convert(rgb, _rgb_to_xyz(_SRGB_PRIMARIES), _rgb_to_xyz(_P3_PRIMARIES))


def p3_image_to_srgb(image: Image.Image) -> Image.Image:
    """Every pixel of a Display P3 image to sRGB, by the same maths (small images only)."""
    m = _mul(_inverse(_rgb_to_xyz(_SRGB_PRIMARIES)), _rgb_to_xyz(_P3_PRIMARIES))
    linear = [_decode_trc(v / 255) for v in range(256)]
    data = image.convert("RGB").tobytes()
    out = bytearray()
    for i in range(0, len(data), 3):
        rgb = _apply(m, [linear[data[i]], linear[data[i + 1]], linear[data[i + 2]]])
        out += bytes(round(_encode_trc(c) * 255) for c in rgb)
    return Image.frombytes("RGB", image.size, bytes(out))


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _mluc(text: str) -> bytes:
    encoded = text.encode("utf-16-be")
    return (b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS"
            + struct.pack(">II", len(encoded), 28) + encoded)


def _xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in xyz)


@functools.cache
def display_p3_profile() -> bytes:
    """An ICC v4 matrix/TRC profile for Display P3 (as iPhones embed), built here:
    ImageCms can create sRGB but not P3, and no profile file is downloaded."""
    colorants = _to_d50(_rgb_to_xyz(_P3_PRIMARIES))
    adaptation = _to_d50(_diagonal([1.0, 1.0, 1.0]))
    # sRGB's transfer curve as parametric type 3: (aX+b)^g above d, cX below.
    trc = (b"para" + bytes(4) + struct.pack(">HH", 3, 0)
           + b"".join(_s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)))
    tags: list[tuple[bytes, bytes]] = [
        (b"desc", _mluc("Display P3")),
        (b"cprt", _mluc("No copyright, use freely")),
        (b"wtpt", _xyz_tag(_D50_XYZ)),
        (b"chad", b"sf32" + bytes(4) + b"".join(_s15(v) for row in adaptation for v in row)),
        *((sig, _xyz_tag([colorants[i][n] for i in range(3)]))
          for n, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))),
        (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data, placed = b"", b"", {}
    for sig, body in tags:
        if body not in placed:  # the three curves share one copy
            placed[body] = offset + len(data)
            data += body + bytes(-len(body) % 4)
        table += sig + struct.pack(">II", placed[body], len(body))
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x04300000)
              + b"mntrRGB XYZ " + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp"
              + bytes(24) + struct.pack(">I", 0) + b"".join(_s15(v) for v in _D50_XYZ)
              + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def p3_look(look: Look) -> Look:
    """The same colours written as Display P3 values (they read wrong as sRGB)."""
    def convert(colour: str) -> str:
        r, g, b = srgb_to_p3(ImageColor.getrgb(colour)[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    return Look(convert(look.top), convert(look.bottom), convert(look.accent))


# -- PNG with alpha, 16-bit PNG ---------------------------------------------------

def cut_out(upright: Image.Image) -> Image.Image:
    """The person cut out: head and shoulders opaque, the background transparent
    (and its hidden RGB a loud magenta, which must never show)."""
    width, height = upright.size
    mask = portrait(width, height, "black", "black", "white").convert("L")
    rgba = Image.new("RGBA", upright.size, (255, 0, 255, 0))
    rgba.paste(upright, mask=mask)
    return rgba


def png_16bit(image: Image.Image) -> bytes:
    """``image`` (RGB, RGBA or L) as a 16-bit-per-sample PNG, written by hand:
    Pillow reads these but writes 16 bits only for grayscale."""
    colour_type, channels = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}[image.mode]
    width, height = image.size
    eight = image.tobytes()
    sixteen = bytearray(2 * len(eight))
    sixteen[0::2] = eight  # v * 257: the high byte and the low byte are both v
    sixteen[1::2] = eight
    stride = 2 * channels * width
    rows = b"".join(b"\x00" + sixteen[y * stride:(y + 1) * stride] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows, 6)) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# -- What stays out, and bodies that lie ---------------------------------------

def heic_like() -> bytes:
    """The start of an iPhone HEIC: an ``ftyp`` box branded ``heic``, then a
    ``meta`` box; enough for anything to identify it, and for us to refuse it."""
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heicmiaf"
    meta = b"meta" + bytes(4) + b"\x00" * 64
    return (struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 4 + len(meta)) + meta
            + random.Random(7).randbytes(20_000))


def with_trailing_garbage(jpeg: bytes) -> bytes:
    """What some upload paths leave behind: bytes after the JPEG's end marker."""
    assert jpeg.endswith(b"\xff\xd9")
    return jpeg + b"\x00" * 100 + random.Random(3).randbytes(5_000)


def truncated_scan(jpeg: bytes) -> bytes:
    """The header and the first part of the scan: a download cut short, stored."""
    start_of_scan = jpeg.index(b"\xff\xda")
    return jpeg[: start_of_scan + (len(jpeg) - start_of_scan) // 3]


# -- Reading the service's answer back -------------------------------------------

def region_means(image: Image.Image, cells: int = 4) -> list[tuple[float, ...]]:
    """Mean colour of each cell of a ``cells`` x ``cells`` grid, row by row."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    means = []
    for row in range(cells):
        for col in range(cells):
            box = (col * width // cells, row * height // cells,
                   (col + 1) * width // cells, (row + 1) * height // cells)
            means.append(tuple(ImageStat.Stat(rgb.crop(box)).mean))
    return means


def colour_distance(got: Image.Image, expected: Image.Image) -> float:
    """The largest difference of a cell's mean channel: small only for the same
    person's photo, the right way up, in the same colours."""
    pairs = zip(region_means(got), region_means(expected), strict=True)
    return max(abs(a - b) for cell_got, cell_expected in pairs
               for a, b in zip(cell_got, cell_expected, strict=True))


def mark_corner(image: Image.Image) -> str:
    """Which corner holds the white mark (``portrait`` draws it top-left):
    the one white corner, else "none" or "several"."""
    rgb = image.convert("RGB")
    side = max(1, min(rgb.size) // 20)
    corners = {"top-left": (0, 0), "top-right": (rgb.width - side, 0),
               "bottom-left": (0, rgb.height - side),
               "bottom-right": (rgb.width - side, rgb.height - side)}
    white = [name for name, (x, y) in corners.items()
             if min(ImageStat.Stat(rgb.crop((x, y, x + side, y + side))).mean) > 200]
    return white[0] if len(white) == 1 else "several" if white else "none"
