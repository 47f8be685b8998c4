"""No display name, whatever it holds, becomes SVG markup (property-based),
and SVG initials keep their CSP on the security paths (blocked, rate-limited)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avatarproxy import svg

SVG = "{http://www.w3.org/2000/svg}"
_XML_FORBIDDEN = {*range(0x20), 0xFFFE, 0xFFFF} - {0x9, 0xA, 0xD}


def _any_text(max_size: int) -> st.SearchStrategy[str]:
    """Every code point, lone surrogates included (Graph's JSON can carry "\ud800"),
    those XML forbids drawn often; st.text() would leave surrogates out."""
    chars = st.one_of(st.characters(blacklist_categories=()),
                      st.sampled_from("\x00\x1f\ud800\udfff\ufffe\uffff"))
    return st.lists(chars, max_size=max_size).map("".join)


@given(_any_text(80), _any_text(4))
def test_any_name_stays_text(title: str, initials: str) -> None:
    body = svg.render(initials, title, (10, 20, 30), (255, 255, 255), 64)
    root = ET.fromstring(body)  # well-formed, whatever the name
    assert [el.tag for el in root.iter()] == [f"{SVG}svg", f"{SVG}title", f"{SVG}rect",
                                              f"{SVG}text"]
    assert not any(key.startswith("on") for el in root.iter() for key in el.attrib)
    kept = "".join(c for c in title
                   if ord(c) not in _XML_FORBIDDEN and not 0xD800 <= ord(c) <= 0xDFFF)
    # Character references escape XML's newline normalisation: exact round trip.
    assert (root.findtext(f"{SVG}title") or "") == kept
    assert b"<script" not in body.lower()


@given(st.text(max_size=12))
def test_the_initials_language_is_one_of_five_or_absent(lang: str) -> None:
    body = svg.render("山田", "山田", (10, 20, 30), (255, 255, 255), 64, lang)
    text = ET.fromstring(body).find(f"{SVG}text")
    assert text is not None
    tag = text.get("{http://www.w3.org/XML/1998/namespace}lang")
    assert tag == {"ja": "ja", "zh": "zh-Hans", "zh-TW": "zh-Hant-TW", "zh-HK": "zh-Hant-HK",
                   "ko": "ko"}.get(lang)


@pytest.mark.parametrize("lang", ["zh-TW", "zh-HK"])
def test_traditional_chinese_initials_name_their_region(lang: str) -> None:
    body = svg.render("大文", "大文", (10, 20, 30), (255, 255, 255), 64, lang)
    assert f'xml:lang="zh-Hant-{lang[-2:]}"'.encode() in body
