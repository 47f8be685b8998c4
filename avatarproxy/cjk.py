"""Chinese, Japanese and Korean names: which characters their initials are, and in which
language's glyph forms they are drawn.

First letters of the given and family names ("山太" for 山田 太郎) mean nothing
to people who write these names. What avatarproxy shows instead (the sources,
and which claims have none: docs/initials.md):

- Chinese and Korean: the given name, its last two characters (王小明 -> 小明,
  김민준 -> 민준, 欧阳娜娜 -> 娜娜, 欧阳修 -> 修); a name of two characters whole
  (张伟). The family name is Graph's ``surname`` when known; from a display
  name alone, its first word, or its first character unless it begins with a
  compound family name (``COMPOUND_SURNAMES``: 司马光 -> 光, 황보민 -> 민).
- Japanese: the family name, whole up to three characters (山田 太郎 -> 山田,
  長谷川 健 -> 長谷川), else its first character; from a display name
  without a space, where the family name ends cannot be told: its first
  character (one character rather than a wrong two).

Kana make a name Japanese, Hangul Korean. A name in Chinese characters alone
(hanzi, kanji) can be either: ``avatar.han_names`` says which, or ``auto``:
Japanese when the display name puts a space between family and given name,
as Japanese directories write them, Chinese otherwise. Middle dots (・ ·)
separate the words of a transliterated name, written given name first
(ジョン・スミス, 约翰·史密斯). ``givenName`` and ``surname`` decide only when
they are written in the display name's scripts (so "Taro"/"Yamada" never
wins over 山田 太郎). Pure functions, table-tested in ``tests/test_sizing.py``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

HAN_NAMES = ("auto", "chinese", "japanese")
# ``avatar.chinese_glyphs``: whose glyph forms Chinese initials take, as the language
# tag the renderer and SVG's xml:lang go by (a pan-CJK font has a face for each).
CHINESE_GLYPHS = {"mainland": "zh", "taiwan": "zh-TW", "hongkong": "zh-HK"}

# Family names of two characters, common enough to be listed (a display name
# alone does not say where the family name ends). Korean: 황보, 선우 and 서문
# also start names of the one-syllable 황, 선, 서 (황보영 may be 황 보영): the
# compound reading shows the last syllable, half a given name at worst, never a
# family name's half; Graph's ``surname`` settles it when set.
COMPOUND_SURNAMES = frozenset((
    "欧阳", "歐陽", "司马", "司馬", "诸葛", "諸葛", "上官", "东方", "東方", "皇甫", "尉迟",
    "尉遲", "公孙", "公孫", "慕容", "令狐", "夏侯", "长孙", "長孫", "宇文", "司徒", "司空",
    "澹台", "澹臺", "申屠", "轩辕", "軒轅", "端木", "独孤", "獨孤", "南宫", "南宮", "西门",
    "西門", "남궁", "황보", "제갈", "선우", "독고", "서문", "사공", "동방"))

# (first, last) code points of each script's blocks. Han: the iteration mark 々
# and its kin, Extension A, the main block, compatibility ideographs, B to J.
_HAN = ((0x3005, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
        (0x20000, 0x3FFFF))
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))  # halfwidth katakana too
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))
# The middle dots of transliterated names: katakana, Latin-1, halfwidth, hyphenation point.
_DOTS = "\u30fb\u00b7\uff65\u2027"
_WORDS = re.compile(rf"[\s{_DOTS}]+")
_JAPANESE_FAMILY_MAX = 3  # 長谷川, 佐々木, 小鳥遊 whole; a longer one by its first character


@dataclass(frozen=True, slots=True)
class Reading:
    """The initials East Asian conventions give a person, and their language.

    ``from_names``: from ``givenName`` and ``surname`` when both are written in
    these scripts (and in the display name's, when it is); ``from_display``:
    from the display name when it is; either None otherwise. ``lang`` (``zh``,
    ``ja``, ``ko``, or "" when neither is set): whose regional glyph forms they
    are drawn in (直, 骨 differ).
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


def _scripts(text: str) -> frozenset[str]:
    return frozenset("hangul" if _within(c, _HANGUL) else "kana" if _within(c, _KANA)
                     else "han" if _within(c, _HAN) else "other" for c in _letters(text))


def is_east_asian(text: str) -> bool:
    """Whether ``text`` has letters and every one is Han, kana or Hangul."""
    scripts = _scripts(text)
    return bool(scripts) and "other" not in scripts


def language(text: str, han_names: str, spaced: bool) -> str:
    """``ko`` with Hangul, ``ja`` with kana, else as ``han_names`` says (``auto``:
    ``ja`` when the display name is ``spaced``, family name first). Only letters
    count: the katakana middle dot (・) is a separator, not kana."""
    scripts = _scripts(text)
    if "hangul" in scripts:
        return "ko"
    if "kana" in scripts:
        return "ja"
    if han_names == "japanese" or (han_names == "auto" and spaced):
        return "ja"
    return "zh"


def _spaced(display: str) -> bool:
    return len([word for word in display.split() if _letters(word)]) >= 2


def _given(family: str, given: str) -> str:
    """Chinese and Korean: the given name's last two letters; two letters in all: both."""
    return family + given if len(family + given) <= 2 else given[-2:]


def _family(family: str) -> str:
    """Japanese: the family name, whole up to three letters, else its first."""
    return family if len(family) <= _JAPANESE_FAMILY_MAX else family[:1]


def _words(display: str) -> list[str]:
    """The display name's words, family name first (their letters only)."""
    words = [_letters(w) for w in _WORDS.split(display) if _letters(w)]
    if any(dot in display for dot in _DOTS):
        words.reverse()  # a transliterated name is written given name first
    return words


def _split(name: str) -> tuple[str, str]:
    """A name written without a space: (family name, given name)."""
    family = next((c for c in COMPOUND_SURNAMES if name.startswith(c) and len(name) > len(c)),
                  name[:1])
    return family, name[len(family):]


def _from_display(display: str, lang: str) -> str:
    words = _words(display)
    if lang == "ja":
        # Without a space the family name's end is unknown: one character, not a wrong two.
        return _family(words[0]) if len(words) >= 2 else words[0][:1]
    family, given = (words[0], "".join(words[1:])) if len(words) >= 2 else _split(words[0])
    return _given(family, given)


def _from_names(surname: str, given: str, lang: str) -> str:
    family = _letters(surname)
    return _family(family) if lang == "ja" else _given(family, _letters(given))


def read(given: str, surname: str, display: str, han_names: str = "auto") -> Reading:
    """The East Asian initials of a person (see the module's conventions)."""
    shown = is_east_asian(display)
    names = bool(given and surname and is_east_asian(given) and is_east_asian(surname)) and (
        not shown or _scripts(surname + given) <= _scripts(display))
    if not names and not shown:
        return Reading(None, None, "")
    text = (surname + given if names else "") + (display if shown else "")
    lang = language(text, han_names, shown and _spaced(display))
    return Reading(_from_names(surname, given, lang) if names else None,
                   _from_display(display, lang) if shown else None, lang)
