from __future__ import annotations

import pytest

from avatarproxy.errors import BadRequest
from avatarproxy.models import PhotoMeta, Profile, Subject
from avatarproxy.sizing import (
    HD_SIZES,
    PALETTE,
    FetchPlan,
    background_for,
    initials_candidates,
    name_initials,
    parse_requested_size,
    parse_size_id,
    plan_fetch,
)


@pytest.mark.parametrize(("text", "size"), [("48", 48), ("1", 1), ("1024", 1024),
                                             ("48x48", 48), ("007", 7)])
def test_requested_size_accepts_digits_and_square_form(text: str, size: int) -> None:
    assert parse_requested_size(text, 1024) == size


@pytest.mark.parametrize("text", ["0", "1025", "-1", "48.0", "48x64", "4 8", "", "x48",
                                  "\u0664\u0668", "\uff14\uff18",  # Arabic-Indic, fullwidth
                                  "48X48x48", "1e3", "999999999999", "48\n"])
def test_requested_size_rejects_everything_else(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_requested_size(text, 1024)


@pytest.mark.parametrize(("size_id", "dims"), [("240x240", (240, 240)), ("240X240", (240, 240)),
                                               ("300x200", (300, 200)), ("1X1", (1, 1)),
                                               ("big", None), ("", None)])
def test_graph_size_ids_parse_in_both_cases(size_id: str, dims: tuple[int, int] | None) -> None:
    assert parse_size_id(size_id) == dims


def _meta(width: int, height: int | None = None) -> PhotoMeta:
    return PhotoMeta(has_photo=True, media_etag='"E"', width=width, height=height or width)


@pytest.mark.parametrize(("requested", "largest", "plan"), [
    (48, 648, FetchPlan(48, 48)),     # exact HD size
    (40, 648, FetchPlan(48, 40)),     # nearest at or above, then downscale
    (100, 648, FetchPlan(120, 100)),
    (649, 648, FetchPlan(648, 649)),  # scaled up: a smaller answer would say "a photo"
    (300, 240, FetchPlan(240, 300)),  # nothing above what the user uploaded
    (1, 48, FetchPlan(48, 1)),
    (500, 504, FetchPlan(504, 500)),
])
def test_plan_uses_nearest_available_hd_size(requested: int, largest: int,
                                             plan: FetchPlan) -> None:
    assert plan_fetch(requested, _meta(largest)) == plan


def test_plan_for_entra_only_photo_uses_largest_and_its_short_side() -> None:
    assert plan_fetch(96, _meta(300, 200)) == FetchPlan(None, 96)
    assert plan_fetch(500, _meta(300, 200)) == FetchPlan(None, 500)
    assert plan_fetch(100, _meta(250)) == FetchPlan(None, 100)  # square but not an HD size


def test_hd_sizes_match_graph_documentation() -> None:
    assert HD_SIZES == (48, 64, 96, 120, 240, 360, 432, 504, 648)


@pytest.mark.parametrize(("profile", "upn", "expected"), [
    (Profile(given_name="Adele", surname="Vance", display_name="Adele Vance"),
     "adele.vance@contoso.com", ["AV"]),
    (Profile(display_name="Ada Lovelace (Contractor)"), "ada@contoso.com", ["AL", "A"]),
    (Profile(display_name="Élodie Dupré"), "elodie@contoso.com", ["ÉD", "E"]),
    (Profile(display_name="山田 太郎"), "taro.yamada@contoso.com", ["山田", "TY"]),
    (Profile(display_name="Cher"), "cher@contoso.com", ["C"]),
    (None, "john.smith_fabrikam.com#ext#@contoso.onmicrosoft.com", ["JS"]),
    (None, "john_fabrikam.com#ext#@contoso.onmicrosoft.com", ["J"]),
    (None, "$admin@contoso.com", ["A"]),
    (None, "o'brien@contoso.com", ["OB"]),
    (Profile(display_name="  "), "x.y@contoso.com", ["XY"]),
])
def test_initials_candidates_in_order(profile: Profile | None, upn: str,
                                      expected: list[str]) -> None:
    assert initials_candidates(profile, Subject(upn)) == expected


# East Asian names (avatarproxy/cjk.py; README, "Initials in Chinese, Japanese and
# Korean"): Chinese and Korean show the given name, Japanese the family name.
@pytest.mark.parametrize(("profile", "expected", "lang"), [
    # givenName and surname known: they decide, the display name comes second.
    (Profile(given_name="小明", surname="王", display_name="王小明"), ["小明"], "zh"),
    (Profile(given_name="伟", surname="张", display_name="张伟"), ["张伟"], "zh"),
    (Profile(given_name="娜娜", surname="欧阳", display_name="欧阳娜娜"), ["娜娜"], "zh"),
    (Profile(given_name="太郎", surname="山田", display_name="山田 太郎"), ["山田"], "ja"),
    (Profile(given_name="健太", surname="佐々木", display_name="佐々木 健太"), ["佐々木"], "ja"),
    # The surname says where the family name ends; the display name alone cannot.
    (Profile(given_name="さくら", surname="山田", display_name="山田さくら"), ["山田", "山"],
     "ja"),
    (Profile(given_name="민준", surname="김", display_name="김민준"), ["민준"], "ko"),
    (Profile(given_name="성종", surname="남궁", display_name="남궁 성종"), ["성종"], "ko"),
    # Only a display name: family name first, as these directories write it.
    (Profile(display_name="王小明"), ["小明"], "zh"),
    (Profile(display_name="陳大文"), ["大文"], "zh"),
    (Profile(display_name="林"), ["林"], "zh"),
    (Profile(display_name="山田 太郎"), ["山田"], "ja"),  # a space: written the Japanese way
    (Profile(display_name="山田　太郎"), ["山田"], "ja"),  # a full-width space too
    (Profile(display_name="ヤマダ タロウ"), ["ヤマダ"], "ja"),
    (Profile(display_name="김민준"), ["민준"], "ko"),
    (Profile(display_name="王小明 (Sales)"), ["小明"], "zh"),
    # Latin names in the fields come after a CJK display name (for when no font draws
    # it); first for a Latin one. Mixed halves say nothing.
    (Profile(given_name="Taro", surname="Yamada", display_name="山田 太郎"), ["山田", "TY"],
     "ja"),
    (Profile(given_name="太郎", surname="Yamada", display_name="Taro Yamada"), ["TY"], ""),
    (Profile(given_name="Adele", surname="Vance", display_name="Adele Vance"), ["AV"], ""),
])
def test_east_asian_names_follow_their_conventions(profile: Profile, expected: list[str],
                                                   lang: str) -> None:
    texts, found = name_initials(profile, Subject("u@contoso.com"))
    # The UPN's letters stay last: drawn when no font covers the rest.
    assert (texts, found) == ([*expected, "U"], lang)


@pytest.mark.parametrize(("han_names", "display", "expected", "lang"), [
    ("auto", "山田太郎", ["太郎"], "zh"),  # no space: read as Chinese
    ("japanese", "山田太郎", ["山"], "ja"),  # no space: where the family name ends is unknown
    ("japanese", "王小明", ["王"], "ja"),
    ("chinese", "山田 太郎", ["太郎"], "zh"),
    ("chinese", "山田 さくら", ["山田"], "ja"),  # kana: Japanese whatever the setting
    ("japanese", "김민준", ["민준"], "ko"),  # Hangul: Korean whatever the setting
])
def test_han_names_setting_decides_names_in_chinese_characters_alone(
        han_names: str, display: str, expected: list[str], lang: str) -> None:
    texts, found = name_initials(Profile(display_name=display), Subject("u@contoso.com"),
                                 han_names)
    assert (texts[:-1], found) == (expected, lang)


def east_asian(given: str | None, surname: str | None, display: str,
               han_names: str = "auto") -> tuple[str, str]:
    """The first initials drawn for a person, and their language."""
    texts, lang = name_initials(Profile(given_name=given, surname=surname, display_name=display),
                                Subject("u@contoso.com"), han_names)
    return texts[0], lang


@pytest.mark.parametrize(("given", "surname", "display", "expected"), [
    ("修", "欧阳", "欧阳修", "修"), ("光", "司马", "司马光", "光"), ("亮", "诸葛", "诸葛亮", "亮"),
    ("민", "남궁", "남궁민", "민"), ("량", "제갈", "제갈량", "량"),
    # Graph's surname settles what a list of compound names cannot: 황 and 보영.
    ("보영", "황", "황보영", "보영"), ("伟", "张", "张伟", "张伟"),
])
def test_a_compound_surname_in_the_fields_is_never_split(
        given: str, surname: str, display: str, expected: str) -> None:
    assert east_asian(given, surname, display)[0] == expected


@pytest.mark.parametrize(("display", "expected"), [
    ("欧阳修", "修"), ("司马光", "光"), ("诸葛亮", "亮"), ("歐陽娜娜", "娜娜"),
    ("上官婉儿", "婉儿"), ("황보민", "민"), ("남궁민수", "민수"), ("남궁 민", "민"),
    ("王小明", "小明"), ("司马", "司马"),
])
def test_a_display_name_alone_knows_the_common_compound_surnames(display: str,
                                                                 expected: str) -> None:
    assert east_asian(None, None, display)[0] == expected


@pytest.mark.parametrize(("given", "surname", "display", "expected"), [
    ("健", "長谷川", "長谷川 健", "長谷川"), ("健", "五十嵐", "五十嵐 健", "五十嵐"),
    ("ゆう", "小鳥遊", "小鳥遊 ゆう", "小鳥遊"), ("健太", "佐々木", "佐々木健太", "佐々木"),
    ("一郎", "勘解由小路", "勘解由小路 一郎", "勘"),  # longer than three: its first character
    (None, None, "長谷川 健", "長谷川"), (None, None, "五十嵐 健", "五十嵐"),
    (None, None, "小鳥遊 ゆう", "小鳥遊"),
    (None, None, "長谷川健", "長"),  # no space, no fields: one character, not 長谷 (a name)
    (None, None, "小鳥遊ゆう", "小"),
])
def test_a_japanese_family_name_is_never_cut_into_another_word(
        given: str | None, surname: str | None, display: str, expected: str) -> None:
    assert east_asian(given, surname, display, "japanese") == (expected, "ja")


@pytest.mark.parametrize(("given", "surname", "display", "expected"), [
    ("Xiaoming", "Wang", "王小明", ["小明", "XW"]), ("Minjun", "Kim", "김민준", ["민준", "MK"]),
    ("Taro", "Yamada", "山田 太郎", ["山田", "TY"]),
    # Fields in another script than the display name's (a reading, hanja): the display.
    ("たろう", "やまだ", "山田 太郎", ["山田"]), ("民俊", "金", "김민준", ["민준"]),
])
def test_a_cjk_display_name_wins_over_fields_in_another_script(
        given: str, surname: str, display: str, expected: list[str]) -> None:
    texts, _ = name_initials(Profile(given_name=given, surname=surname, display_name=display),
                             Subject("u@contoso.com"))
    assert texts == [*expected, "U"]


@pytest.mark.parametrize(("display", "expected"), [
    ("王小明\uff08Tony\uff09", "小明"), ("陳大文\uff08Peter\uff09", "大文"),
    ("【営業】山田 太郎", "山田"),
    ("王小明「Tony」", "小明"), ("王小明 (Tony)", "小明"),
])
def test_full_width_brackets_are_dropped_like_ascii_parentheses(display: str,
                                                               expected: str) -> None:
    assert east_asian(None, None, display)[0] == expected


@pytest.mark.parametrize(("display", "expected", "lang"), [
    # Transliterated names, given name first: the family name is the last word.
    ("ジョン・スミス", "スミス", "ja"), ("约翰·史密斯", "约翰", "zh"),
    ("约翰・史密斯", "约翰", "zh"),  # the katakana middle dot is no kana: not made Japanese
    ("玛丽･居里", "玛丽", "zh"),
])
def test_middle_dots_separate_words_and_are_not_kana(display: str, expected: str,
                                                     lang: str) -> None:
    assert east_asian(None, None, display) == (expected, lang)


@pytest.mark.parametrize(("display", "expected"), [
    ("สมชาย ใจดี", "สจ"),  # a leading vowel (ใ) is not the word's initial
    ("เกศินี แก้วกาญจนา", "กก"),
    ("राम कुमार", "रक"),
])
def test_other_scripts_take_each_words_first_letter(display: str, expected: str) -> None:
    assert initials_candidates(Profile(display_name=display), Subject("u@contoso.com")) == [
        expected, "U"]


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize("colour", PALETTE)
def test_palette_keeps_white_text_readable(colour: tuple[int, int, int]) -> None:
    contrast = 1.05 / (_luminance(colour) + 0.05)
    assert contrast >= 4.5, colour


def test_background_is_deterministic_and_varies() -> None:
    assert background_for("a@contoso.com") == background_for("a@contoso.com")
    colours = {background_for(f"user{i}@contoso.com") for i in range(100)}
    assert len(colours) > len(PALETTE) // 2
