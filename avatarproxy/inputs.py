"""Rules for what a client may ask: subjects (UPN or object id), sizes, options.

Pure functions raising ``BadRequest``; nothing reaches Graph until these pass.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from multidict import MultiDict, MultiMapping

from .errors import BadRequest
from .models import Subject, SubjectKind
from .negotiation import parse_format
from .sizing import parse_requested_size

# Entra ID allows A-Z a-z 0-9 ' . - _ ! # ^ ~ in a UPN's local part (no
# accents); a UPN may begin with "$". Guests look like
# name_domain.com#EXT#@tenant.onmicrosoft.com. Domains are DNS names.
_LOCAL = r"\$?[A-Za-z0-9'._\-!#^~]{1,64}"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
_UPN = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
UPN_MAX_LENGTH = 113  # Entra ID's limit for userPrincipalName


@functools.lru_cache(maxsize=8192)  # pages ask for the same people again and again
def parse_subject(text: str) -> Subject:
    """A UPN or a GUID, normalised to lower case (Entra ID compares them so)."""
    if _GUID.fullmatch(text):
        return Subject(text.lower())
    if len(text) > UPN_MAX_LENGTH or not _UPN.fullmatch(text):
        raise BadRequest("not a valid userPrincipalName or object id")
    return Subject(text.lower())


# Graph's contact ids: URL-safe base64 (letters, digits, - _ and = padding),
# about 150 characters; some room is left, and no "/" or "." gets through.
_CONTACT_ID = re.compile(r"^[A-Za-z0-9_=-]{1,512}$")


def parse_contact(mailbox: str, contact_id: str) -> Subject:
    """A contact of ``mailbox`` (a UPN or object id); ``BadRequest`` if either is malformed.
    The id keeps its case: it is base64."""
    if not _CONTACT_ID.fullmatch(contact_id):
        raise BadRequest("not a valid contact id")
    return Subject(contact_id, "contact", parse_subject(mailbox).key)


def parse_object_id(text: str, kind: SubjectKind) -> Subject:
    """Groups and teams are addressed by object id (GUID) only."""
    if not _GUID.fullmatch(text):
        raise BadRequest(f"not a valid {kind} object id")
    return Subject(text.lower(), kind)


@functools.lru_cache(maxsize=1024)
def parse_size(text: str, max_size: int) -> int:
    return parse_requested_size(text, max_size)


# Parameters we act on. Anything else is ignored: pages add cache busters.
KNOWN_PARAMS = ("fallback", "format", "sig")


def known_params(query: MultiMapping[str]) -> dict[str, str]:
    """The known parameters, each given at most once (two could disagree)."""
    params: dict[str, str] = {}
    if not query:  # most requests
        return params
    for name in KNOWN_PARAMS:
        values = query.getall(name, [])
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        if values:
            params[name] = values[0]
    return params


def parse_fallback(query: Mapping[str, str]) -> bool:
    """``?fallback=404`` (Gravatar's ``d=404`` habit) turns initials off."""
    value = query.get("fallback")
    if value is None or value == "initials":
        return True
    if value == "404":
        return False
    raise BadRequest("fallback must be 404 or initials")


def check_avatar_request(path: str, query: str, max_size: int) -> None:
    """``BadRequest`` for what the service would refuse: a path (percent-decoded) that
    is no avatar route, a bad subject or size, a bad or repeated known parameter.
    ``avatarproxy sign`` asks this before signing."""
    segments = path.split("/")
    if not path.startswith("/avatar/") or len(segments) not in (4, 5, 6):
        raise BadRequest(f"not an avatar path: {_ROUTES}")
    if len(segments) == 6:
        if segments[2] != "contact":
            raise BadRequest(f"not an avatar path: {_ROUTES}")
        parse_contact(segments[3], segments[4])
    elif len(segments) == 5:
        if segments[2] not in ("group", "team"):
            raise BadRequest(f"not an avatar path: {_ROUTES}")
        parse_object_id(segments[3], "group" if segments[2] == "group" else "team")
    else:
        parse_subject(segments[2])
    parse_size(segments[-1], max_size)
    params = known_params(MultiDict(parse_qsl(query, keep_blank_values=True)))
    parse_fallback(params)
    parse_format(params.get("format"))


_ROUTES = ("/avatar/{upn-or-object-id}/{size}, /avatar/group/{id}/{size}, "
           "/avatar/team/{id}/{size} or /avatar/contact/{mailbox}/{contact-id}/{size}")
