"""The Graph requests avatarproxy may make, as patterns: what the security
tests hold every generated and every received request to."""

from __future__ import annotations

import re

# One path segment as quote(..., safe="@") writes it: unreserved characters,
# "@", and percent-escapes; never "/", "?", "#", "'" or a raw "%".
# A segment of dots alone would be a dot-segment ("..": up one level).
_SEGMENT = r"(?!\.+(?:/|\?|$))(?:[A-Za-z0-9_.~@-]|%[0-9A-F]{2})+"
# The OData key form for UPNs starting with "$" ("'" inside is %27%27).
_KEY_FORM = r"\('\$(?:[A-Za-z0-9_.~@$-]|%[0-9A-F]{2})*'\)"
_SUFFIX = r"(?:|/photo|/photo/\$value|/photos|/photos/[1-9][0-9]{0,3}x[1-9][0-9]{0,3}(?:/\$value)?)"
_USER = rf"/v1\.0/users(?:/{_SEGMENT}|{_KEY_FORM})"
# Groups and teams are addressed by object id only.
_GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_GROUP = rf"/v1\.0/(?:groups|teams)/{_GUID}"
# A contact in a user's mailbox: its id one segment, "=" (base64 padding) kept;
# only its largest photo (Graph has no /photos/{size} for contacts).
_CONTACT = rf"{_USER}/contacts/(?!\.+(?:/|\?|$))(?:[A-Za-z0-9_.~=-]|%[0-9A-F]{{2}})+"
_CONTACT_SUFFIX = r"(?:|/photo|/photo/\$value)"
ALLOWED_PATH = re.compile(rf"^(?:(?:{_USER}|{_GROUP}){_SUFFIX}|{_CONTACT}{_CONTACT_SUFFIX})$")
USER_ONLY = re.compile(rf"^(?:{_USER}|{_GROUP}|{_CONTACT})$")
# The only query on one object: $select (names for initials).
ALLOWED_QUERY = re.compile(r"^\$select=[A-Za-z]+(?:,[A-Za-z]+)*$")
# The one query on the collection: who has this address as mail or alias. The
# address is an OData literal (a quote inside doubled), all percent-encoded.
_LITERAL = r"(?:[A-Za-z0-9_.~-]|%27%27|%(?!27)[0-9A-F]{2})*"
MAIL_LOOKUP = re.compile(
    rf"^\$select=id,userPrincipalName&\$filter=mail%20eq%20%27(?P<lit>{_LITERAL})%27%20or%20"
    r"proxyAddresses"
    r"%2Fany%28a%3Aa%20eq%20%27smtp%3A(?P=lit)%27%29$")


def is_allowed(raw_path: str) -> bool:
    """``raw_path`` as the fake Graph recorded it, version prefix and query included."""
    path, _, query = raw_path.partition("?")
    if path == "/v1.0/users":
        return MAIL_LOOKUP.fullmatch(query) is not None
    if not query:
        return ALLOWED_PATH.fullmatch(path) is not None
    return USER_ONLY.fullmatch(path) is not None and ALLOWED_QUERY.fullmatch(query) is not None
