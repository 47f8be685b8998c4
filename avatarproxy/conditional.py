"""Conditional requests: does ``If-None-Match`` name the current representation?

Pure. RFC 9110 13.1.2: the header is ``*`` or a list of entity tags, compared
weakly (``W/"x"`` matches ``"x"``); a match answers 304 with no body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ENTITY_TAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*(?:,|$)')


def _opaque(etag: str) -> str:
    return etag.removeprefix("W/").strip('"')


def none_match(headers: Iterable[str], etag: str) -> bool:
    """True when any ``If-None-Match`` header line matches ``etag`` (or is ``*``).

    A malformed list is read up to its first bad element: a client that
    garbles the header gets a full response, never a wrong 304.
    """
    current = _opaque(etag)
    for line in headers:
        if line.strip() == "*":
            return True
        position = 0
        while position < len(line):
            match = _ENTITY_TAG.match(line, position)
            if match is None:
                break
            if match.group(1) == current:
                return True
            position = match.end()
    return False
