from __future__ import annotations

import pytest

from avatarproxy.errors import BadRequest
from avatarproxy.inputs import check_avatar_request, parse_contact, parse_fallback, parse_subject
from avatarproxy.models import Subject


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


def test_a_contact_keeps_its_ids_case_and_its_mailbox_is_a_subject() -> None:
    assert parse_contact("Adele.Vance@Contoso.com", "AAMkAD-x_Y=") == Subject(
        "AAMkAD-x_Y=", "contact", "adele.vance@contoso.com")
    assert Subject("AAMkAD-x_Y=", "contact", "a@b.com").local_part == ""  # no UPN letters


@pytest.mark.parametrize(("mailbox", "contact"), [
    ("adele", "AAA="), ("adele@contoso.com", ""), ("adele@contoso.com", "a/b"),
    ("adele@contoso.com", ".."), ("adele@contoso.com", "a b"), ("adele@contoso.com", "a+b"),
    ("adele@contoso.com", "x" * 513), ("adele@contoso.com", "AAA=\n"),
])
def test_invalid_contacts_are_rejected(mailbox: str, contact: str) -> None:
    with pytest.raises(BadRequest):
        parse_contact(mailbox, contact)


@pytest.mark.parametrize("path", [
    "/avatar/contact/adele.vance@contoso.com/AAMkAD-x_Y=/48",
    "/avatar/contact/6e2b1f0a-1d3c-4b5a-8f7e-0123456789ab/AAA/96",
])
def test_contact_paths_can_be_signed(path: str) -> None:
    check_avatar_request(path, "", 1024)


@pytest.mark.parametrize("path", [
    "/avatar/contact/adele.vance@contoso.com/48", "/avatar/contacts/a@b.com/AAA/48",
    "/avatar/contact/adele/AAA/48", "/avatar/contact/a@b.com/a.b/48",
])
def test_other_contact_paths_are_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        check_avatar_request(path, "", 1024)
