"""No display name, whatever it holds, becomes SVG markup (property-based),
and SVG initials keep their CSP on the security paths (blocked, rate-limited)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from avatarproxy import svg

SVG = "{http://www.w3.org/2000/svg}"
_XML_ALLOWED = st.characters(blacklist_categories=("Cs",))  # no lone surrogates


@given(st.text(_XML_ALLOWED, max_size=80), st.text(_XML_ALLOWED, max_size=4))
def test_any_name_stays_text(title: str, initials: str) -> None:
    body = svg.render(initials, title, (10, 20, 30), (255, 255, 255), 64)
    root = ET.fromstring(body)  # well-formed, whatever the name
    assert [el.tag for el in root.iter()] == [f"{SVG}svg", f"{SVG}title", f"{SVG}rect",
                                              f"{SVG}text"]
    assert not any(key.startswith("on") for el in root.iter() for key in el.attrib)
    kept = "".join(c for c in title if ord(c) >= 0x20 or c in "\t\n\r")
    # Character references escape XML's newline normalisation: exact round trip.
    assert (root.findtext(f"{SVG}title") or "") == kept
    assert b"<script" not in body.lower()
