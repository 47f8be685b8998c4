from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageDraw, ImageFont, features

import avatarproxy
from avatarproxy import imaging
from avatarproxy.answers import initials_look
from avatarproxy.errors import ConfigError, InvalidImage
from avatarproxy.imaging import CONTENT_TYPES, image_dimensions, render_photo
from avatarproxy.initials import InitialsRenderer
from avatarproxy.models import Profile, Subject

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
DARK_BG, LIGHT_BG = (20, 50, 110), (250, 225, 120)
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
SYSTEM_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# What the container image ships (deploy/Dockerfile) from Debian's fonts-noto-cjk,
# at the same path; tests/run installs the package.
NOTO_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")


def encode(im: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def near(pixel: object, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def photo(width: int = 648, height: int = 648) -> Image.Image:
    """Photo-like content: smooth shapes plus noise, so codecs do real work."""
    base = Image.effect_mandelbrot((width, height), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    return Image.blend(base, Image.effect_noise((width, height), 30).convert("RGB"), 0.2)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def ink_pixels(data: bytes, background: tuple[int, int, int]) -> int:
    im = decode(data).convert("RGB")
    diff = ImageChops.difference(im, Image.new("RGB", im.size, background)).convert("L")
    return diff.width * diff.height - diff.histogram()[0]


# --- render_photo: geometry -------------------------------------------------

@pytest.mark.parametrize("size", [1, 48, 96, 100, 360, 648])
def test_downscaled_jpeg_is_exactly_the_requested_square(size: int) -> None:
    out = decode(render_photo(encode(photo()), size, "jpeg"))
    assert out.size == (size, size)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_small_source_is_scaled_up_to_the_size_asked(fmt: str) -> None:
    # Smaller than asked, an answer would tell an embedding page that there is
    # a photo, and its largest size (naturalWidth needs no pixel access).
    out = decode(render_photo(encode(photo(240, 240), fmt.upper()), 500, fmt))
    assert out.size == (500, 500)


@pytest.mark.parametrize("portrait", [False, True])
def test_non_square_source_is_centre_cropped(portrait: bool) -> None:
    im = Image.new("RGB", (300, 200), GREEN)
    im.paste(RED, (0, 0, 50, 200))
    im.paste(BLUE, (250, 0, 300, 200))
    im.paste(WHITE, (130, 80, 170, 120))
    if portrait:
        im = im.transpose(Image.Transpose.ROTATE_90)
    out = decode(render_photo(encode(im, "PNG"), 200, "png")).convert("RGB")
    assert out.size == (200, 200)
    assert near(out.getpixel((100, 100)), WHITE)
    # The red and blue bands were exactly the part outside the centred square.
    for corner in [(0, 0), (199, 0), (0, 199), (199, 199), (0, 100), (199, 100), (100, 0)]:
        assert near(out.getpixel(corner), GREEN), corner


@pytest.mark.parametrize(("orientation", "blue_at", "red_at"), [
    (1, (10, 100), (190, 100)),   # as stored: blue left
    (3, (190, 100), (10, 100)),   # rotated 180
    (6, (100, 10), (100, 190)),   # rotate 90 clockwise: left edge goes to the top
    (8, (100, 190), (100, 10)),   # rotate 90 counter-clockwise: left edge to the bottom
])
def test_exif_orientation_is_applied(orientation: int, blue_at: tuple[int, int],
                                     red_at: tuple[int, int]) -> None:
    im = Image.new("RGB", (200, 200), RED)
    im.paste(BLUE, (0, 0, 100, 200))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    out = decode(render_photo(encode(im, exif=exif, quality=95), 200, "png")).convert("RGB")
    assert near(out.getpixel(blue_at), BLUE)
    assert near(out.getpixel(red_at), RED)


# --- render_photo: formats, modes, metadata ---------------------------------

@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
def test_each_format_is_encoded_as_that_format(fmt: str) -> None:
    out = decode(render_photo(encode(photo()), 96, fmt))
    assert out.format == PIL_FORMATS[fmt]
    assert out.size == (96, 96)
    assert CONTENT_TYPES[fmt] == f"image/{fmt}"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif"])
def test_output_carries_no_source_metadata(fmt: str) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SecretPhoneMaker"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N",
                                  ExifTags.GPS.GPSLatitude: (52.0, 22.0, 7.0)}
    source = encode(photo(), exif=exif, comment=b"secret-comment",
                    xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret-xmp</x:xmpmeta>",
                    icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert b"SecretPhoneMaker" in source and b"secret-comment" in source  # the input has them
    data = render_photo(source, 96, fmt)
    out = decode(data)
    assert len(out.getexif()) == 0
    assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile"} & set(out.info)
    for secret in (b"Exif\x00\x00", b"SecretPhoneMaker", b"secret-comment", b"secret-xmp"):
        assert secret not in data


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = Image.new("CMYK", (100, 100), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(render_photo(encode(cmyk), 50, "jpeg"))
    assert out.mode == "RGB"
    assert near(out.getpixel((25, 25)), RED)


def test_alpha_is_composited_on_white_for_jpeg() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 128), (0, 0, 100, 50))
    out = decode(render_photo(encode(rgba, "PNG"), 100, "jpeg"))
    assert out.mode == "RGB"
    assert near(out.getpixel((50, 90)), WHITE, tolerance=8)  # transparent -> white, not black
    assert near(out.getpixel((50, 10)), (255, 127, 127), tolerance=12)


@pytest.mark.parametrize("fmt", ["png", "webp", "avif"])
def test_alpha_is_kept_for_formats_that_carry_it(fmt: str) -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (25, 25, 75, 75))
    out = decode(render_photo(encode(rgba, "PNG"), 100, fmt)).convert("RGBA")
    corner, centre = out.getpixel((2, 2)), out.getpixel((50, 50))
    assert isinstance(corner, tuple) and isinstance(centre, tuple)
    assert corner[3] < 10 and centre[3] > 245


def test_palette_gif_source_is_resampled_in_colour() -> None:
    im = photo(200, 200).quantize(64)
    out = decode(render_photo(encode(im, "GIF"), 50, "png"))
    assert out.mode == "RGB"
    assert len(out.getcolors(maxcolors=50 * 50) or []) > 64  # filtered, not nearest-neighbour


@pytest.mark.parametrize("transparent", [False, True])
def test_16_bit_grey_png_keeps_its_grey_levels(transparent: bool) -> None:
    im = Image.new("I;16", (64, 64), 100 * 257)  # mid-dark grey at 16 bits a sample
    im.paste(200 * 257, (0, 0, 64, 16))
    params = {"transparency": 200 * 257} if transparent else {}
    out = decode(render_photo(encode(im, "PNG", **params), 32, "png")).convert("RGBA")
    assert near(out.getpixel((16, 24)), (100, 100, 100, 255), tolerance=2)
    top = out.getpixel((16, 2))
    assert isinstance(top, tuple)
    assert top[3] == 0 if transparent else near(top, (200, 200, 200, 255), tolerance=2)


def red_blue_swapped_profile() -> bytes:
    """sRGB with its red and blue primaries exchanged: a wide-gamut stand-in."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack_from(">I", icc, 128)
    tags = {bytes(icc[132 + 12 * i:136 + 12 * i]): 136 + 12 * i for i in range(count)}
    red, blue = tags[b"rXYZ"], tags[b"bXYZ"]
    icc[red:red + 8], icc[blue:blue + 8] = icc[blue:blue + 8], icc[red:red + 8]
    return bytes(icc)


def test_embedded_colour_profile_is_converted_to_srgb_then_dropped() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "PNG", icc_profile=red_blue_swapped_profile())
    out = decode(render_photo(data, 32, "png"))
    assert near(out.getpixel((16, 16)), BLUE)  # what the profile says "red" means
    assert "icc_profile" not in out.info


def test_broken_icc_profile_does_not_reject_the_photo() -> None:
    data = encode(Image.new("RGB", (64, 64), BLUE), icc_profile=b"definitely not a profile")
    out = decode(render_photo(data, 32, "png"))
    assert near(out.getpixel((16, 16)), BLUE)


def test_unreadable_exif_does_not_reject_the_photo() -> None:
    data = encode(Image.new("RGB", (64, 64), BLUE), exif=b"Exif\x00\x00garbage")
    out = decode(render_photo(data, 32, "png"))
    assert near(out.getpixel((16, 16)), BLUE)


def test_unknown_photo_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="gif"):
        render_photo(encode(photo(64, 64)), 32, "gif")


# --- render_photo: hostile input --------------------------------------------

def truncated_jpeg() -> bytes:
    data = encode(photo(), quality=95)
    return data[: len(data) // 2]


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 64,
                                  truncated_jpeg()],
                         ids=["empty", "text", "jpeg-magic-only", "truncated-jpeg"])
def test_undecodable_bytes_raise_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        render_photo(data, 48, "jpeg")


def test_header_claiming_too_many_pixels_is_refused_before_decoding() -> None:
    # 8000x6000 is below Pillow's own bomb limit, so only our guard can catch it;
    # the message shows it was the size check and not a failed decode.
    with pytest.raises(InvalidImage, match="8000x6000"):
        render_photo(png_header(8000, 6000), 48, "png")


def test_real_image_above_max_pixels_is_refused() -> None:
    data = encode(photo(200, 200), "PNG")
    assert decode(render_photo(data, 48, "png")).size == (48, 48)
    with pytest.raises(InvalidImage):
        render_photo(data, 48, "png", max_pixels=200 * 200 - 1)


@pytest.mark.parametrize("call", [image_dimensions,
                                  lambda data: render_photo(data, 48, "png")])
def test_pillow_bomb_errors_become_invalid_image(call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidImage):
        call(png_header(100_000, 100_000))


# --- image_dimensions -------------------------------------------------------

def test_image_dimensions_reads_graph_1x1_gif_placeholder() -> None:
    assert image_dimensions(encode(Image.new("P", (1, 1)), "GIF")) == (1, 1)


def test_image_dimensions_reads_header_without_decoding() -> None:
    assert image_dimensions(png_header(648, 432)) == (648, 432)


@pytest.mark.parametrize("data", [b"", b"<html>throttled</html>"])
def test_image_dimensions_rejects_non_images(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        image_dimensions(data)


# --- initials ----------------------------------------------------------------

@pytest.fixture(scope="module")
def renderer() -> InitialsRenderer:
    return InitialsRenderer()


@pytest.mark.parametrize("size", [1, 2, 48, 96, 1024])
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_initials_are_an_exact_square(renderer: InitialsRenderer, size: int, fmt: str) -> None:
    out = decode(renderer.render(["AB"], DARK_BG, size, fmt))
    assert out.size == (size, size)
    assert out.format == PIL_FORMATS[fmt]


@pytest.mark.parametrize(("background", "text_colour"), [(DARK_BG, WHITE),
                                                         (LIGHT_BG, (24, 24, 24))])
def test_initials_text_contrasts_with_background(renderer: InitialsRenderer,
                                                 background: tuple[int, int, int],
                                                 text_colour: tuple[int, int, int]) -> None:
    out = decode(renderer.render(["AB"], background, 96, "png")).convert("RGB")
    colours = {colour for _, colour in out.getcolors(maxcolors=96 * 96) or []}
    assert background in colours
    assert text_colour in colours  # solid glyph interiors in the chosen colour


def test_initials_are_centred(renderer: InitialsRenderer) -> None:
    data = renderer.render(["AB"], DARK_BG, 200, "png")
    im = decode(data).convert("RGB")
    bbox = ImageChops.difference(im, Image.new("RGB", im.size, DARK_BG)).getbbox()
    assert bbox is not None
    left, top, right, bottom = bbox
    assert abs(left - (200 - right)) <= 2 and abs(top - (200 - bottom)) <= 2
    assert 0.3 < (bottom - top) / 200 < 0.45  # cap height follows the square's size


def test_initials_webp_is_lossless(renderer: InitialsRenderer) -> None:
    png = decode(renderer.render(["ÉÅ"], (200, 80, 40), 96, "png")).convert("RGB")
    webp = decode(renderer.render(["ÉÅ"], (200, 80, 40), 96, "webp")).convert("RGB")
    assert ImageChops.difference(png, webp).getbbox() is None


@pytest.mark.parametrize("fmt", ["jpeg", "avif", "gif"])
def test_initials_refuse_other_formats(renderer: InitialsRenderer, fmt: str) -> None:
    with pytest.raises(ValueError, match=fmt):
        renderer.render(["AB"], DARK_BG, 96, fmt)


@pytest.mark.parametrize("text", ["AB", "ÉÅ", "ЖЮ", "ΩΣ", "سم", "אב", "A B"])
def test_bundled_font_covers_and_draws_many_scripts(renderer: InitialsRenderer,
                                                    text: str) -> None:
    assert renderer.covers(text)
    assert ink_pixels(renderer.render([text], DARK_BG, 96, "png"), DARK_BG) > 100


def test_cjk_is_not_covered_so_the_next_candidate_is_drawn(renderer: InitialsRenderer) -> None:
    assert not renderer.covers("山田")
    assert not renderer.covers("A山")
    fallback = renderer.render(["山田", "YT"], DARK_BG, 96, "png")
    assert fallback == renderer.render(["YT"], DARK_BG, 96, "png")
    assert ink_pixels(fallback, DARK_BG) > 100


@pytest.mark.parametrize("candidates", [[], ["山田"], ["山田", "  "]])
def test_no_covered_candidate_gives_plain_background(renderer: InitialsRenderer,
                                                     candidates: list[str]) -> None:
    out = decode(renderer.render(candidates, DARK_BG, 96, "png")).convert("RGB")
    assert out.getcolors() == [(96 * 96, DARK_BG)]


@pytest.fixture(scope="module")
def cjk_renderer() -> InitialsRenderer:
    if not NOTO_CJK.is_file():
        pytest.fail(f"{NOTO_CJK} is missing: install Debian's fonts-noto-cjk (tests/run does)")
    return InitialsRenderer(cjk_font=NOTO_CJK)


def glyph_masks(font: ImageFont.FreeTypeFont, text: str) -> list[bytes]:
    """Each character of ``text`` drawn alone, as mask bytes."""
    masks = []
    for char in text:
        im = Image.new("L", (120, 120))
        ImageDraw.Draw(im).text((10, 100), char, fill=255, font=font, anchor="ls")
        masks.append(im.tobytes())
    return masks


NOT_IN_ANY_FONT = "􏿽"  # a private-use character: every font draws its .notdef


@pytest.mark.parametrize(("text", "lang"), [
    ("山田", "ja"), ("佐々", "ja"), ("ヤマ", "ja"), ("小明", "zh"), ("大文", "zh"),
    ("民준", "ko"), ("민준", "ko"), ("성종", "ko"), ("𠀋", "ja"),  # a supplementary-plane kanji
])
def test_cjk_font_draws_real_glyphs_never_the_notdef_box(
        cjk_renderer: InitialsRenderer, text: str, lang: str) -> None:
    assert cjk_renderer.covers(text)
    body = cjk_renderer.render([text, "XY"], DARK_BG, 96, "png", lang)
    assert ink_pixels(body, DARK_BG) > 100
    assert body != cjk_renderer.render(["XY"], DARK_BG, 96, "png", lang)
    for face in range(4):  # JP, KR, SC, TC: whichever face a language picks
        font = ImageFont.truetype(NOTO_CJK, 80, index=face)
        (notdef,) = glyph_masks(font, NOT_IN_ANY_FONT)
        masks = glyph_masks(font, text)
        assert notdef not in masks, (text, face)
        assert len(set(masks)) == len(set(text))  # distinct characters, distinct glyphs


def test_cjk_initials_are_drawn_in_their_languages_glyph_forms(
        cjk_renderer: InitialsRenderer) -> None:
    # 直 and 骨 are written differently in Japan and in mainland China.
    japanese = cjk_renderer.render(["直骨"], DARK_BG, 96, "png", "ja")
    chinese = cjk_renderer.render(["直骨"], DARK_BG, 96, "png", "zh")
    assert japanese != chinese
    assert cjk_renderer.render(["直骨"], DARK_BG, 96, "png") == japanese  # the first face


def test_chinese_initials_take_taiwans_or_hong_kongs_glyph_forms_when_asked(
        cjk_renderer: InitialsRenderer) -> None:
    # 骨 has three forms: mainland China's, Taiwan's and Hong Kong's.
    drawn = {lang: cjk_renderer.render(["骨"], DARK_BG, 96, "png", lang)
             for lang in ("zh", "zh-TW", "zh-HK")}
    assert len(set(drawn.values())) == 3
    chan = Profile(display_name="陳大文")
    assert initials_look(Subject("chan@contoso.com"), chan).lang == "zh"  # mainland: as before
    for glyphs, lang in (("taiwan", "zh-TW"), ("hongkong", "zh-HK")):
        look = initials_look(Subject("chan@contoso.com"), chan, "auto", glyphs)
        assert (look.texts[0], look.lang) == ("大文", lang)
    # Japanese and Korean names keep their own forms.
    assert initials_look(Subject("t@contoso.com"), Profile(display_name="山田 太郎"), "auto",
                         "taiwan").lang == "ja"


def test_latin_names_keep_the_bundled_font_when_a_cjk_font_is_loaded(
        renderer: InitialsRenderer, cjk_renderer: InitialsRenderer) -> None:
    for text in ("AV", "ЖЮ", "سم"):
        assert cjk_renderer.render([text], DARK_BG, 96, "png") == renderer.render(
            [text], DARK_BG, 96, "png")
    assert cjk_renderer.draws_cjk and not renderer.draws_cjk
    assert renderer.fonts_id == "" and cjk_renderer.fonts_id  # in the initials' keys


def test_two_cjk_characters_fit_inside_the_circle(cjk_renderer: InitialsRenderer) -> None:
    im = decode(cjk_renderer.render(["小明"], DARK_BG, 100, "png", "zh")).convert("RGB")
    bbox = ImageChops.difference(im, Image.new("RGB", im.size, DARK_BG)).getbbox()
    assert bbox is not None
    assert bbox[2] - bbox[0] <= 81  # avatar clients crop to a circle


@pytest.mark.parametrize("name", ["สจ", "รก", "ক"])  # Thai, Devanagari, Bengali
def test_scripts_no_shipped_font_covers_fall_back_to_the_upns_letters(
        renderer: InitialsRenderer, cjk_renderer: InitialsRenderer, name: str) -> None:
    # What the image ships (the bundled DejaVu, Noto Sans CJK) has no Thai or
    # Indic glyphs: the UPN's letters, never a row of boxes.
    for fonts in (renderer, cjk_renderer):
        assert not fonts.covers(name)
        drawn = fonts.render([name, "SJ"], DARK_BG, 96, "png")
        assert drawn == fonts.render(["SJ"], DARK_BG, 96, "png")
        assert fonts.first_covered([name, "SJ"]) == "SJ"
        assert fonts.twin().render_quick([name, "SJ"], DARK_BG, 48) == fonts.twin(
            ).render_quick(["SJ"], DARK_BG, 48)


def test_cjk_font_keeps_few_freetype_faces(cjk_renderer: InitialsRenderer) -> None:
    # ~1 MB each for a 20 MB CJK font: a flood of sizes must not grow memory.
    renderer = cjk_renderer.twin()
    for size in range(20, 200):
        renderer.render_quick(["山田"], DARK_BG, size, "ja")
    assert 0 < len(renderer._faces) <= 16


def test_missing_cjk_font_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        InitialsRenderer(cjk_font=tmp_path / "nope.ttc")
    assert info.value.problems[0].startswith("avatar.cjk_font: cannot load")


def test_raqm_layout_is_available() -> None:
    # Arabic joining and right-to-left order need libraqm with FriBiDi; the
    # container must ship them (libfribidi0), or Arabic names come out wrong.
    assert features.check("raqm") is True


def test_arabic_letters_are_joined(renderer: InitialsRenderer) -> None:
    # A zero-width non-joiner forces isolated forms; only a shaping layout
    # makes the joined text look different from it.
    joined = renderer.render(["سم"], DARK_BG, 96, "png")
    isolated = renderer.render(["س\u200cم"], DARK_BG, 96, "png")
    assert joined != isolated


def test_bundled_font_shapes_arabic_unlike_basic_layout(renderer: InitialsRenderer) -> None:
    def draw(layout: ImageFont.Layout) -> Image.Image:
        font = ImageFont.truetype(renderer.font_paths[0], 40, layout_engine=layout)
        im = Image.new("L", (200, 80))
        ImageDraw.Draw(im).text((20, 60), "سم", fill=255, font=font, anchor="ls")
        return im

    shaped, unshaped = draw(ImageFont.Layout.RAQM), draw(ImageFont.Layout.BASIC)
    assert ImageChops.difference(shaped, unshaped).getbbox() is not None


def test_bundled_font_is_loaded_from_the_package(renderer: InitialsRenderer) -> None:
    package_dir = Path(avatarproxy.__file__).resolve().parent
    assert renderer.font_paths[0].is_relative_to(package_dir)
    assert renderer.font_paths[0].is_file()


def test_rendering_does_not_depend_on_system_font_folders(
        renderer: InitialsRenderer, tmp_path: Path) -> None:
    script = ("import sys; from avatarproxy.initials import InitialsRenderer; "
              "png = InitialsRenderer().render(['ЖЮ'], (20, 50, 110), 96, 'png'); "
              "sys.stdout.buffer.write(png)")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_DIRS": str(empty),
           "XDG_DATA_HOME": str(empty), "FONTCONFIG_PATH": str(empty)}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            capture_output=True, check=True, timeout=60)
    assert ink_pixels(result.stdout, DARK_BG) > 100
    assert result.stdout == renderer.render(["ЖЮ"], DARK_BG, 96, "png")


def test_missing_extra_font_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    missing, garbage = tmp_path / "nope.ttf", tmp_path / "garbage.ttf"
    garbage.write_bytes(b"not a font")
    with pytest.raises(ConfigError) as info:
        InitialsRenderer([missing, str(garbage)])
    assert len(info.value.problems) == 2  # every bad font reported at once
    assert info.value.problems[0].startswith(f"avatar.extra_fonts: cannot load {missing}")
    assert str(garbage) in info.value.problems[1]


@pytest.mark.skipif(not SYSTEM_DEJAVU.is_file(), reason="system DejaVu Sans not installed")
def test_extra_font_is_loaded_after_the_bundled_one() -> None:
    renderer = InitialsRenderer([str(SYSTEM_DEJAVU)])
    assert renderer.font_paths[1] == SYSTEM_DEJAVU
    assert renderer.covers("ЖЮ")
    assert ink_pixels(renderer.render(["ЖЮ"], DARK_BG, 96, "png"), DARK_BG) > 100


def test_renderer_version_is_a_nonempty_string() -> None:
    assert isinstance(imaging.RENDERER_VERSION, str) and imaging.RENDERER_VERSION
