"""What a Gravatar or Libravatar URL asks for: a hash, a size, a default.

``/avatar/<hash>[.png|.jpg|.jpeg]``: the MD5 (32 hex digits) or SHA-256 (64) of an
address, trimmed and lower-cased, as GitLab, Gitea, Redmine, Discourse and
Libravatar clients compute it. The route has one segment after ``/avatar/``;
a person's (``/avatar/{upn}/{size}``) has two, a group's or team's three, and
a hash is neither a UPN (no ``@``) nor an object id (no dashes): the shapes are
never confused. A suffix, in any case, fixes the format (``.png`` PNG,
``.jpg`` or ``.jpeg`` JPEG), for tools that store the file under that name.

Parameters, short or long: ``s``/``size`` (1 to ``avatar.max_size``, default
80), ``d``/``default`` (``404``, ``mp``, ``identicon``, ``blank``,
``initials``; ``mm`` is ``mp``; anything else, a URL included, is ``mp``:
never a redirect, which would make the service an open redirector),
``f``/``forcedefault`` (``y``: the default even for a known hash), ``r``/
``rating`` (accepted, ignored: every photo is a workplace photo). Anything
else is ignored (cache busters such as Discourse's ``reset_cache``); a
parameter given twice, or in both forms, is a 400. Pure functions raising
``BadRequest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import MultiMapping

from .errors import BadRequest
from .hashindex import parse_digest
from .inputs import parse_size

# What the route matches: anything else under /avatar/<one segment> is no route (404).
ROUTE_PATTERN = r"[0-9A-Fa-f]{32}(?:[0-9A-Fa-f]{32})?(?i:\.(?:png|jpg|jpeg))?"
DEFAULT_SIZE = 80
DEFAULTS = ("404", "mp", "identicon", "blank", "initials")
_ALIASES = {"mm": "mp", "mysteryman": "mp", "mysteryperson": "mp"}
_SUFFIXES = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}
_YES = frozenset({"y", "yes", "true", "1"})
_PARAMS = (("s", "size"), ("d", "default"), ("f", "forcedefault"))


@dataclass(frozen=True, slots=True)
class HashRequest:
    """One Gravatar request. ``format``: the photo format the suffix fixes, if any."""

    digest: bytes
    size: int
    default: str  # one of DEFAULTS
    force_default: bool = False
    format: str | None = None


def parse_hash_request(name: str, query: MultiMapping[str], max_size: int) -> HashRequest:
    """The request for ``/avatar/<name>`` with ``query``; ``BadRequest`` if malformed."""
    stem, dot, suffix = name.rpartition(".") if "." in name else (name, "", "")
    fmt = _SUFFIXES.get(suffix.lower()) if dot else None
    if dot and fmt is None:
        raise BadRequest("suffix must be .png or .jpg")
    digest = parse_digest(stem)
    if digest is None:
        raise BadRequest("not an MD5 or SHA-256 hash: 32 or 64 hex digits")
    size, default, force = (_one(query, short, long) for short, long in _PARAMS)
    return HashRequest(
        digest,
        DEFAULT_SIZE if size is None else parse_size(size, max_size),
        _default(default),
        force is not None and force.lower() in _YES,
        fmt)


def _one(query: MultiMapping[str], short: str, long: str) -> str | None:
    """The parameter's value, by either name, given at most once (two could disagree)."""
    values = [*query.getall(short, []), *query.getall(long, [])]
    if len(values) > 1:
        raise BadRequest(f"{short} (or {long}) given more than once")
    return values[0] if values else None


def _default(value: str | None) -> str:
    if value is None:
        return "mp"
    value = value.lower()
    value = _ALIASES.get(value, value)
    return value if value in DEFAULTS else "mp"
