"""Pure arithmetic and text rules: requested sizes, Graph HD sizes, initials, colours.

Nothing here does I/O, so every rule is table-tested in ``tests/test_sizing.py``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from . import cjk
from .errors import BadRequest
from .models import PhotoMeta, Profile, Subject

# The square sizes Microsoft 365 keeps for every uploaded photo, up to the
# uploaded one (a user who uploaded 240x240 has nothing above it).
HD_SIZES: tuple[int, ...] = (48, 64, 96, 120, 240, 360, 432, 504, 648)

_SIZE = re.compile(r"^([0-9]{1,5})(?:x([0-9]{1,5}))?$")
_SIZE_ID = re.compile(r"^([0-9]+)[xX]([0-9]+)$")


def parse_requested_size(text: str, max_size: int) -> int:
    """``48`` or ``48x48`` -> 48; anything else is a ``BadRequest``."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise BadRequest("size must be a whole number of pixels, like 48 or 48x48")
    side, other = match.group(1), match.group(2)
    if other is not None and int(other) != int(side):
        raise BadRequest("size must be square, like 48x48")
    size = int(side)
    if not 1 <= size <= max_size:
        raise BadRequest(f"size must be between 1 and {max_size}")
    return size


def parse_size_id(size_id: str) -> tuple[int, int] | None:
    """Graph's size ids come as ``240x240`` or ``240X240``; None when unparsable."""
    match = _SIZE_ID.fullmatch(size_id.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def is_placeholder(width: int, height: int) -> bool:
    """Graph's documented "no photo / size absent" answer is a 1x1 image."""
    return width <= 1 and height <= 1


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """Which Graph photo to download and what square size to produce from it.

    ``hd_size`` None means the largest photo (``/photo/$value``); ``target`` is
    always the size asked, scaled up from a smaller photo: an answer smaller
    than the request would tell any page embedding it (``naturalWidth``, no
    pixel read needed) that the person has a photo, and its largest size.
    """

    hd_size: int | None
    target: int


def _hd_sizes_up_to(width: int, height: int) -> tuple[int, ...]:
    """HD sizes Graph can serve: all up to the largest, if the largest is an HD square."""
    if width != height or width not in HD_SIZES:
        return ()
    return tuple(s for s in HD_SIZES if s <= width)


def plan_fetch(requested: int, meta: PhotoMeta) -> FetchPlan:
    """The nearest available HD size >= requested, else the largest photo (scaled up)."""
    return _plan(requested, meta.width, meta.height)


@functools.lru_cache(maxsize=4096)  # on every hit: a few sizes times a few photo shapes
def _plan(requested: int, width: int, height: int) -> FetchPlan:
    sizes = _hd_sizes_up_to(width, height)
    if not sizes:
        # Entra-ID-only photo of arbitrary dimensions: only the largest exists.
        return FetchPlan(hd_size=None, target=requested)
    for size in sizes:
        if size >= requested:
            return FetchPlan(hd_size=size, target=requested)
    return FetchPlan(hd_size=sizes[-1], target=requested)


# What XML 1.0 forbids even as a character reference: C0 controls but tab, LF
# and CR, surrogates, U+FFFE and U+FFFF. Graph's JSON can carry them (a lone
# "\ud800" escape decodes to a lone surrogate); a browser refuses an SVG holding
# one, and no font draws them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` without the characters XML forbids."""
    return _NOT_XML.sub("", text)


# A parenthesised part, in ASCII or full-width brackets (U+FF08 U+FF09, 【】, 「」):
# "王小明\uff08Tony\uff09" is 小明, as "王小明 (Tony)" is.
_PARENTHESISED = re.compile("[(\\[\uff08【「].*?[)\\]\uff09】」]")
_WORD_SPLIT = re.compile(r"[\s,]+")
_LOCAL_SPLIT = re.compile(r"[._\-'!^~#]+")


# Thai and Lao vowels written before the consonant they follow in speech: a
# word's initial is its first consonant (สมชาย ใจดี -> สจ), not this vowel.
_LEADING_VOWELS = frozenset("\u0e40\u0e41\u0e42\u0e43\u0e44\u0ec0\u0ec1\u0ec2\u0ec3\u0ec4")


def _first_letter(word: str) -> str:
    for char in word:
        if unicodedata.category(char)[0] == "L" and char not in _LEADING_VOWELS:
            return char.upper()
    return ""


def _initials_of(words: list[str]) -> str:
    letters = [_first_letter(w) for w in words]
    letters = [ch for ch in letters if ch]
    if not letters:
        return ""
    return letters[0] if len(letters) == 1 else letters[0] + letters[-1]


def initials_candidates(profile: Profile | None, subject: Subject,
                        han_names: str = "auto") -> list[str]:
    """Initials to try in order: given name + surname, display name, UPN local part.

    The renderer draws the first one its fonts fully cover, so a name in a
    script we have no font for falls back to the UPN's letters, never to boxes.
    Chinese, Japanese and Korean names follow their own conventions (``cjk``).
    """
    return name_initials(profile, subject, han_names)[0]


def name_initials(profile: Profile | None, subject: Subject,
                  han_names: str = "auto") -> tuple[list[str], str]:
    """``initials_candidates``, and the language ("zh", "ja", "ko", or "") whose
    glyph forms East Asian ones are drawn in (``cjk.Reading.lang``)."""
    candidates: list[str] = []
    lang = ""
    if profile is not None:
        given, surname = xml_text(profile.given_name or ""), xml_text(profile.surname or "")
        # "Ada Lovelace (Contractor)" -> "AL", not "A(".
        display = _PARENTHESISED.sub(" ", xml_text(profile.display_name or "")).strip()
        reading = cjk.read(given, surname, display, han_names)
        lang = reading.lang
        # Latin names in the fields (half of each script: neither); after a CJK display
        # name, only for when no font draws it (山田 太郎 is 山田, not "TY").
        latin = (_initials_of([given, surname]) if given and surname and not (
            cjk.is_east_asian(given) or cjk.is_east_asian(surname)) else "")
        if reading.from_names is not None:
            candidates.append(reading.from_names)
        elif reading.from_display is None:
            candidates.append(latin)
        if reading.from_display is not None:
            candidates += [reading.from_display, latin]
        elif display:
            candidates.append(_initials_of(_WORD_SPLIT.split(display)))
    candidates.append(_initials_of(_LOCAL_SPLIT.split(subject.local_part)))
    unique: list[str] = []
    for candidate in candidates:
        if candidate and candidate not in unique:
            unique.append(candidate)
    return unique, lang


# Mid-tone colours that all keep white text above WCAG's 4.5:1 contrast.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0xA4, 0x26, 0x2C), (0xCA, 0x50, 0x10), (0x7A, 0x68, 0x02), (0x0B, 0x6A, 0x0B),
    (0x03, 0x83, 0x87), (0x00, 0x5B, 0x70), (0x00, 0x78, 0xD4), (0x4F, 0x6B, 0xED),
    (0x5C, 0x2E, 0x91), (0x88, 0x17, 0x98), (0xC2, 0x39, 0xB3), (0xE3, 0x00, 0x8C),
    (0x75, 0x0B, 0x1C), (0x49, 0x82, 0x05), (0x4A, 0x5B, 0x6B), (0x69, 0x79, 0x7E),
)


def background_for(seed: str) -> tuple[int, int, int]:
    """A deterministic palette colour: the same person always gets the same one."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return PALETTE[int.from_bytes(digest[:4], "big") % len(PALETTE)]
