from __future__ import annotations

from urllib.parse import unquote

import pytest
from graphpaths import is_allowed
from hypothesis import given
from hypothesis import strategies as st

from avatarproxy.graph.urls import (
    contact_path,
    graph_url,
    mail_lookup_query,
    subject_path,
    user_path,
)
from avatarproxy.inputs import parse_contact, parse_subject
from avatarproxy.models import Subject
from avatarproxy.sizing import HD_SIZES

BASE = "https://graph.microsoft.com/v1.0"


def test_plain_upn_is_one_encoded_segment() -> None:
    assert user_path(Subject("adele.vance@contoso.com")) == "/users/adele.vance@contoso.com"


def test_guest_hash_is_percent_encoded_not_a_fragment() -> None:
    path = user_path(Subject("john_fabrikam.com#ext#@contoso.onmicrosoft.com"))
    assert path == "/users/john_fabrikam.com%23ext%23@contoso.onmicrosoft.com"
    url = graph_url(BASE, path + "/photo")
    assert url.fragment == ""
    assert str(url).endswith("%23ext%23@contoso.onmicrosoft.com/photo")


def test_dollar_upn_uses_the_odata_key_form_with_doubled_quotes() -> None:
    assert user_path(Subject("$admin@contoso.com")) == "/users('$admin@contoso.com')"
    assert user_path(Subject("$o'neil@contoso.com")) == "/users('$o%27%27neil@contoso.com')"


@pytest.mark.parametrize("key", [".", "..", "..."])
def test_dot_segments_are_encoded_so_no_url_library_climbs_out(key: str) -> None:
    path = user_path(Subject(key))
    assert path == "/users/" + "%2E" * len(key)
    assert graph_url(BASE, path + "/photo").raw_path.startswith("/v1.0/users/%2E")


def test_apostrophe_upn_is_encoded_in_a_plain_segment() -> None:
    assert user_path(Subject("o'brien@contoso.com")) == "/users/o%27brien@contoso.com"


def test_graph_url_is_not_requoted() -> None:
    url = graph_url(BASE, "/users/a%23b@c.com/photos/48x48/$value")
    assert url.raw_path == "/v1.0/users/a%23b@c.com/photos/48x48/$value"
    assert url.raw_query_string == ""


@given(st.text(min_size=1, max_size=200))
def test_no_key_escapes_its_path_segment(key: str) -> None:
    path = user_path(Subject(key))
    if key.startswith("$"):
        assert path.startswith("/users('") and path.endswith("')")
        inner = path[len("/users('"):-2]
        assert unquote(inner).replace("''", "'") == key
    else:
        inner = path[len("/users/"):]
        assert unquote(inner) == key
    for forbidden in "/?#'\\ \t\n":
        assert forbidden not in inner
    url = graph_url(BASE, path + "/photo")
    assert url.raw_path.startswith("/v1.0/users")
    assert url.raw_path.endswith("/photo")
    assert url.raw_query_string == "" and url.fragment == ""
    assert url.host == "graph.microsoft.com"


# -- every request the client can build stays within the allowed set ----------

_UPN = (r"\$?[A-Za-z0-9'._\-!#^~]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,8}[A-Za-z0-9])?\.)"
        r"{1,3}[A-Za-z]{2,6}")
_GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What GraphClient appends to user_path, and the one query it sends.
_SUFFIXES = ["/photo", "/photo/$value", *(f"/photos/{s}x{s}/$value" for s in HD_SIZES)]
_PROFILE_QUERY = "$select=id,displayName,givenName,surname"


def _requests_for(subject: Subject) -> list[str]:
    path = user_path(subject)
    urls = [graph_url(BASE, path + suffix) for suffix in _SUFFIXES]
    urls.append(graph_url(BASE, path, _PROFILE_QUERY))
    return [u.raw_path + (f"?{u.raw_query_string}" if u.raw_query_string else "") for u in urls]


@given(st.one_of(st.from_regex(_UPN, fullmatch=True), st.from_regex(_GUID, fullmatch=True)))
def test_every_valid_subject_yields_only_allowed_graph_requests(text: str) -> None:
    subject = parse_subject(text)
    for raw in _requests_for(subject):
        assert is_allowed(raw), raw


@given(st.text(min_size=1, max_size=120))
def test_even_unvalidated_keys_yield_only_allowed_graph_requests(key: str) -> None:
    # Defence in depth: the builder alone keeps any string inside its segment.
    for raw in _requests_for(Subject(key)):
        assert is_allowed(raw), raw
        assert graph_url(BASE, raw[len("/v1.0"):]).host == "graph.microsoft.com"


@pytest.mark.parametrize("raw", [
    "/v1.0/users", "/v1.0/users/a@b.com/manager", "/v1.0/users/a/b/photo",
    "/v1.0/users/a@b.com/photo?$select=id", "/v1.0/users/a@b.com?$filter=x",
    "/v1.0/users/a@b.com/photos/48x48/$value?x=1", "/v1.0/$batch", "/v1.0/users/../groups",
    "/v1.0/users/..", "/v1.0/users/./photo",
    "/v1.0/users('a')/photo", "/v1.0/users/a#b/photo", "/v1.0/groups/x/photo",
    "/v1.0/users/a@b.com/photo/$value/x", "/v1.0/users/a%2fb",
])
def test_the_allowed_set_refuses_other_requests(raw: str) -> None:
    assert not is_allowed(raw)


@given(st.text(min_size=1, max_size=200), st.sampled_from(["group", "team"]))
def test_no_group_or_team_id_escapes_its_path_segment(key: str, kind: str) -> None:
    subject = Subject(key, kind)  # type: ignore[arg-type]
    path = subject_path(subject)
    prefix = "/groups/" if kind == "group" else "/teams/"
    assert path.startswith(prefix)
    inner = path[len(prefix):]
    assert unquote(inner) == key
    for forbidden in "/?#'\\ \t\n()$":
        assert forbidden not in inner
    url = graph_url(BASE, path + "/photo/$value")
    assert url.raw_path.startswith("/v1.0" + prefix)
    assert url.raw_path.endswith("/photo/$value")
    assert url.raw_query_string == "" and url.fragment == ""
    assert url.host == "graph.microsoft.com"


def test_subject_path_dispatches_on_kind() -> None:
    guid = "0b5e4f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    assert subject_path(Subject(guid)) == f"/users/{guid}"
    assert subject_path(Subject(guid, "group")) == f"/groups/{guid}"
    assert subject_path(Subject(guid, "team")) == f"/teams/{guid}"


@given(st.text(min_size=1, max_size=200))
def test_no_address_escapes_its_mail_lookup_literal(address: str) -> None:
    from urllib.parse import parse_qs

    query = mail_lookup_query(address)
    parsed = parse_qs(query, keep_blank_values=True)
    assert set(parsed) == {"$select", "$filter"}
    assert parsed["$select"] == ["id,userPrincipalName"]
    (expression,) = parsed["$filter"]
    literal = address.replace("'", "''")
    assert expression == f"mail eq '{literal}' or proxyAddresses/any(a:a eq 'smtp:{literal}')"
    url = graph_url(BASE, "/users", query)
    assert url.raw_path == "/v1.0/users" and url.fragment == ""
    assert url.host == "graph.microsoft.com"


@given(st.text(min_size=1, max_size=120))
def test_every_address_lookup_is_in_the_allowed_set(address: str) -> None:
    url = graph_url(BASE, "/users", mail_lookup_query(address))
    assert is_allowed(f"{url.raw_path}?{url.raw_query_string}")


@pytest.mark.parametrize("raw", [
    "/v1.0/users?$select=id", "/v1.0/users?$filter=accountEnabled%20eq%20true",
    "/v1.0/users?$select=id&$filter=mail%20eq%20%27a%27%20or%20true",
    "/v1.0/groups/0b5e4f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b/members",
])
def test_the_allowed_set_refuses_other_collection_queries(raw: str) -> None:
    assert not is_allowed(raw)


# -- contacts: /users/{mailbox}/contacts/{id}, the mailbox by the user rules ----

_CONTACT_ID = r"[A-Za-z0-9_=-]{1,200}"
_CONTACT_SUFFIXES = ["/photo", "/photo/$value"]


def test_contact_path_keeps_base64_padding_and_case() -> None:
    subject = parse_contact("adele.vance@contoso.com", "AAMkAD-x_Y=")
    assert contact_path(subject) == "/users/adele.vance@contoso.com/contacts/AAMkAD-x_Y="
    assert subject_path(subject) == contact_path(subject)
    guest = parse_contact("john_fabrikam.com%23EXT%23@contoso.onmicrosoft.com".replace(
        "%23", "#"), "AAA=")
    assert contact_path(guest).startswith("/users/john_fabrikam.com%23ext%23@")
    assert contact_path(parse_contact("$admin@contoso.com", "AAA=")) == (
        "/users('$admin@contoso.com')/contacts/AAA=")


@given(st.text(min_size=1, max_size=120), st.text(min_size=1, max_size=200))
def test_no_mailbox_or_contact_id_escapes_its_path_segment(mailbox: str, key: str) -> None:
    path = contact_path(Subject(key, "contact", mailbox))
    head, _, inner = path.rpartition("/contacts/")
    assert head == user_path(Subject(mailbox))
    assert unquote(inner) == key
    for forbidden in "/?#'\\ \t\n":
        assert forbidden not in inner
    assert inner.strip(".")  # no dot-segment
    url = graph_url(BASE, path + "/photo/$value")
    assert url.raw_path.endswith("/photo/$value")
    assert url.raw_query_string == "" and url.fragment == ""
    assert url.host == "graph.microsoft.com"


def _contact_requests(subject: Subject) -> list[str]:
    path = contact_path(subject)
    urls = [graph_url(BASE, path + suffix) for suffix in _CONTACT_SUFFIXES]
    urls.append(graph_url(BASE, path, _PROFILE_QUERY))
    return [u.raw_path + (f"?{u.raw_query_string}" if u.raw_query_string else "") for u in urls]


@given(st.one_of(st.from_regex(_UPN, fullmatch=True), st.from_regex(_GUID, fullmatch=True)),
       st.from_regex(_CONTACT_ID, fullmatch=True))
def test_every_valid_contact_yields_only_allowed_graph_requests(mailbox: str, key: str) -> None:
    for raw in _contact_requests(parse_contact(mailbox, key)):
        assert is_allowed(raw), raw


@given(st.text(min_size=1, max_size=120), st.text(min_size=1, max_size=120))
def test_even_unvalidated_contacts_yield_only_allowed_graph_requests(mailbox: str,
                                                                     key: str) -> None:
    for raw in _contact_requests(Subject(key, "contact", mailbox)):
        assert is_allowed(raw), raw


@pytest.mark.parametrize("raw", [
    "/v1.0/users/a@b.com/contacts", "/v1.0/users/a@b.com/contacts/x/photos/48x48/$value",
    "/v1.0/users/a@b.com/contacts/x/y/photo", "/v1.0/users/a@b.com/contacts/../photo",
    "/v1.0/users/a@b.com/contacts/x/photo?$select=id", "/v1.0/me/contacts/x/photo",
    "/v1.0/users/a@b.com/contactfolders/f/contacts/x/photo",
])
def test_the_allowed_set_refuses_other_contact_requests(raw: str) -> None:
    assert not is_allowed(raw)
