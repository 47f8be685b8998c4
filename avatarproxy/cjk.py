"""Chinese, Japanese and Korean names: which characters their initials are, and in which
language's glyph forms they are drawn.

First letters of the given and family names ("山太" for 山田 太郎) mean nothing
to people who write these names. What they expect instead, and what their
widely used workplace apps show (sources: README, "Initials in Chinese,
Japanese and Korean"):

- Chinese and Korean: the given name, which is the last two characters of a
  name written family name first (王小明 -> 小明, 김민준 -> 민준, 欧阳娜娜 -> 娜娜);
  a name of two characters whole (张伟).
- Japanese: the family name (山田 太郎 -> 山田), its first two characters.

Kana make a name Japanese, Hangul Korean. A name in Chinese characters alone
(hanzi, kanji) can be either: ``avatar.han_names`` says which, or ``auto``:
Japanese when the display name puts a space between family and given name,
as Japanese directories write them, Chinese otherwise. At most two
characters: two full-width characters are as wide as four Latin letters, the
most the circle holds legibly (the renderer shrinks wider text to fit).
Pure functions, table-tested in ``tests/test_sizing.py``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

HAN_NAMES = ("auto", "chinese", "japanese")

# (first, last) code points of each script's blocks. Han: the iteration mark 々
# and its kin, Extension A, the main block, compatibility ideographs, B to J.
_HAN = ((0x3005, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
        (0x20000, 0x3FFFF))
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))  # halfwidth katakana too
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))


@dataclass(frozen=True, slots=True)
class Reading:
    """The initials East Asian conventions give a person, and their language.

    ``from_names``: from ``givenName`` and ``surname`` when both are written in
    these scripts; ``from_display``: from the display name when it is; either
    None otherwise. ``lang`` (``zh``, ``ja``, ``ko``, or "" when neither is
    set): whose regional glyph forms they are drawn in (直, 骨 differ).
    """

    from_names: str | None
    from_display: str | None
    lang: str


def _within(char: str, blocks: tuple[tuple[int, int], ...]) -> bool:
    point = ord(char)
    return any(first <= point <= last for first, last in blocks)


def _letters(text: str) -> str:
    # Spaces, the middle dots of transliterated names (・ ·) and marks are no initials.
    return "".join(c for c in text if unicodedata.category(c)[0] == "L")


def is_east_asian(text: str) -> bool:
    """Whether ``text`` has letters and every one is Han, kana or Hangul."""
    letters = _letters(text)
    return bool(letters) and all(_within(c, _HAN) or _within(c, _KANA) or _within(c, _HANGUL)
                                 for c in letters)


def language(text: str, han_names: str, spaced: bool) -> str:
    """``ko`` with Hangul, ``ja`` with kana, else as ``han_names`` says (``auto``:
    ``ja`` when the display name is ``spaced``, family name first)."""
    if any(_within(c, _HANGUL) for c in text):
        return "ko"
    if any(_within(c, _KANA) for c in text):
        return "ja"
    if han_names == "japanese" or (han_names == "auto" and spaced):
        return "ja"
    return "zh"


def _spaced(display: str) -> bool:
    return len([word for word in display.split() if _letters(word)]) >= 2


def _given(family_first: str) -> str:
    """The last two letters of a name written family name first: the given name."""
    return _letters(family_first)[-2:]


def _family(family_first: str) -> str:
    """The family name's first two letters: the first word, or the name's start."""
    words = [w for w in family_first.split() if _letters(w)]
    return _letters(words[0] if words else "")[:2]


def read(given: str, surname: str, display: str, han_names: str = "auto") -> Reading:
    """The East Asian initials of a person (see the module's conventions)."""
    names = given and surname and is_east_asian(given) and is_east_asian(surname)
    shown = is_east_asian(display)
    if not names and not shown:
        return Reading(None, None, "")
    text = (surname + given if names else "") + (display if shown else "")
    lang = language(text, han_names, shown and _spaced(display))
    pick = _family if lang == "ja" else _given
    return Reading(pick(f"{surname} {given}") if names else None,
                   pick(display) if shown else None, lang)
