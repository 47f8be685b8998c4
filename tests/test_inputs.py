from __future__ import annotations

import pytest

from avatarproxy.errors import BadRequest
from avatarproxy.inputs import parse_fallback, parse_subject


@pytest.mark.parametrize(("text", "key"), [
    ("Adele.Vance@Contoso.com", "adele.vance@contoso.com"),
    ("john_fabrikam.com#EXT#@contoso.onmicrosoft.com",
     "john_fabrikam.com#ext#@contoso.onmicrosoft.com"),
    ("$admin@contoso.com", "$admin@contoso.com"),
    ("o'brien@contoso.com", "o'brien@contoso.com"),
    ("a!b^c~d-e_f@sub.contoso.co.uk", "a!b^c~d-e_f@sub.contoso.co.uk"),
    ("6E2B1F0A-1D3C-4B5A-8F7E-0123456789AB", "6e2b1f0a-1d3c-4b5a-8f7e-0123456789ab"),
])
def test_valid_subjects_are_normalised_to_lower_case(text: str, key: str) -> None:
    assert parse_subject(text).key == key


@pytest.mark.parametrize("text", [
    "", "adele", "@contoso.com", "adele@", "adele@contoso", "adèle@contoso.com",
    "a/b@contoso.com", "a?b@contoso.com", "a b@contoso.com", "a%2Fb@contoso.com",
    "adele@contoso.com/photo", "a$b@contoso.com", "$$x@contoso.com", "a@b@contoso.com",
    "x" * 65 + "@contoso.com", "a@" + "b" * 120 + ".com", "..", "users", "adele@contoso.com\n",
    "6e2b1f0a-1d3c-4b5a-8f7e-0123456789a", "{6e2b1f0a-1d3c-4b5a-8f7e-0123456789ab}",
])
def test_invalid_subjects_are_rejected(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_subject(text)


def test_fallback_values() -> None:
    assert parse_fallback({}) is True
    assert parse_fallback({"fallback": "initials"}) is True
    assert parse_fallback({"fallback": "404"}) is False
    with pytest.raises(BadRequest):
        parse_fallback({"fallback": "mp"})
