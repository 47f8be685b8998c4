"""The one URL builder: where user input becomes a Graph path or query.

Every path segment and OData literal made from a subject or an address is
built here and nowhere else, so the encoding rules (``#EXT#``, the
``('$upn')`` key form, dot-segments, doubled quotes) hold for every call.
"""

from __future__ import annotations

from urllib.parse import quote

from yarl import URL

from ..models import Subject


def user_path(subject: Subject) -> str:
    """The encoded Graph path of a user: the only place user input becomes a path.

    Every character that could end the segment (``/``, ``?``, ``#``, ``%``)
    is percent-encoded: a guest's ``#EXT#`` would otherwise be cut off as a
    fragment. A UPN starting with ``$`` must use the OData key form
    ``/users('$name@contoso.com')`` (Graph reads ``/users/$x`` as a system
    query option), and inside that form a ``'`` is doubled.
    """
    key = subject.key
    if key.startswith("$"):
        return "/users('" + quote(key.replace("'", "''"), safe="@$") + "')"
    if not key.strip("."):
        # "." and ".." are dot-segments: a URL library would climb out of /users.
        return "/users/" + key.replace(".", "%2E")
    return "/users/" + quote(key, safe="@")


def group_path(subject: Subject) -> str:
    """``/groups/{id}``; ids are validated GUIDs, encoded anyway (defence in depth)."""
    return "/groups/" + quote(subject.key, safe="")


def team_path(subject: Subject) -> str:
    return "/teams/" + quote(subject.key, safe="")


def contact_path(subject: Subject) -> str:
    """``/users/{mailbox}/contacts/{id}``: the mailbox as any user's key, the contact
    id as one encoded segment (ids are checked on input, encoded anyway). Its
    base64 padding ``=`` stays as Graph writes it, legal in a path segment."""
    contact = quote(subject.key, safe="=")
    if not contact.strip("."):
        contact = contact.replace(".", "%2E")  # a dot-segment would climb out of contacts
    return user_path(Subject(subject.mailbox)) + "/contacts/" + contact


def subject_path(subject: Subject) -> str:
    """The Graph path of any subject: users, groups, teams and contacts."""
    if subject.kind == "group":
        return group_path(subject)
    if subject.kind == "team":
        return team_path(subject)
    if subject.kind == "contact":
        return contact_path(subject)
    return user_path(subject)


def mail_lookup_query(address: str) -> str:
    """The ``/users`` query finding who has ``address`` as mail or as a proxy address.

    In many tenants ``mail`` differs from the UPN; aliases live in
    ``proxyAddresses`` as ``smtp:alias@domain``. Inside an OData string
    literal a ``'`` is doubled; the whole expression is percent-encoded.
    """
    literal = address.replace("'", "''")
    expression = f"mail eq '{literal}' or proxyAddresses/any(a:a eq 'smtp:{literal}')"
    # The UPN too: the domain and guest rules apply to the person found.
    return "$select=id,userPrincipalName&$filter=" + quote(expression, safe="")


def graph_url(base_url: str, path: str, query: str = "") -> URL:
    """Join base and an already-encoded path; ``encoded=True`` stops re-quoting."""
    text = base_url.rstrip("/") + path + (f"?{query}" if query else "")
    return URL(text, encoded=True)
