"""Graph's JSON resources (profilePhoto, user, group, team, contact) read into our values.

Graph's JSON is not trusted to have the shape its documentation gives: a
field of the wrong type counts as missing, and what ends up in our cache keys
and ETags is printable ASCII only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..models import NOBODY, Identity, PhotoMeta, Profile
from ..sizing import is_placeholder, parse_size_id

_GUID = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")


def meta_from_json(data: Mapping[str, Any]) -> PhotoMeta:
    """A profilePhoto's JSON; the ``1x1`` answer or a missing mediaEtag means no photo."""
    width, height = _dimensions(data)
    etag = _media_etag(data)
    if is_placeholder(width, height) or not etag:
        return PhotoMeta(has_photo=False, fetched_at=time.time())
    return PhotoMeta(has_photo=True, media_etag=etag, width=width, height=height,
                     fetched_at=time.time())


def contact_meta_from_json(data: Mapping[str, Any]) -> PhotoMeta | None:
    """A contact's profilePhoto JSON: "no photo" only for the documented 1x1 answer; a
    photo when it names its mediaEtag (sizes missing: the largest, of unknown size);
    None when it says neither, so the caller asks the bytes.

    Unlike a user's, this shape was never seen from a real tenant (docs/contacts.md):
    what it leaves out must not read as "no photo".
    """
    width, height = _dimensions(data)
    if (width, height) != (0, 0) and is_placeholder(width, height):
        return PhotoMeta(has_photo=False, fetched_at=time.time())
    etag = _media_etag(data)
    if not etag:
        return None
    # Sizes unknown (0): the largest is fetched, and a contact has no other.
    return PhotoMeta(has_photo=True, media_etag=etag, width=width, height=height,
                     fetched_at=time.time())


def _dimensions(data: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height, from the fields or else the ``WxH`` id; 0 when neither says."""
    size = parse_size_id(str(data.get("id", ""))) or (0, 0)
    return _int(data.get("width"), size[0]), _int(data.get("height"), size[1])


def _media_etag(data: Mapping[str, Any]) -> str:
    # Our keys and ETags are built from it: nothing but printable ASCII gets through.
    return str(data.get("@odata.mediaEtag") or "").encode("ascii", "backslashreplace").decode()


def identity_from_json(data: Mapping[str, Any]) -> Identity:
    """A user's id, UPN and (when selected) mail and ``smtp:`` aliases; ``NOBODY`` if
    the id is not a GUID or the UPN is missing."""
    object_id, upn = _str(data.get("id")), _str(data.get("userPrincipalName"))
    if object_id is None or upn is None or not _GUID.fullmatch(object_id):
        return NOBODY
    aliases = data.get("proxyAddresses")
    addresses = [_str(data.get("mail")) or "", *(
        a[5:] for a in (aliases if isinstance(aliases, list) else [])
        if isinstance(a, str) and a[:5].lower() == "smtp:")]  # not x500:, sip:...
    return Identity(object_id.lower(), upn.lower(),
                    tuple(dict.fromkeys(a.lower() for a in addresses if a)))


def profile_from_json(data: Mapping[str, Any], *, upn: bool = False) -> Profile:
    """Names for initials; with ``upn`` (a user's, when it was selected) the UPN too."""
    profile = Profile(object_id=_str(data.get("id")), display_name=_str(data.get("displayName")),
                      given_name=_str(data.get("givenName")), surname=_str(data.get("surname")))
    if upn:
        # "": asked, but Graph named none (whose photo it is cannot be told).
        profile = replace(profile, upn=(_str(data.get("userPrincipalName")) or "").lower())
    return profile


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
