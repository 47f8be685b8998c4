"""Users delta query: every user's addresses, then only what changed.

A round is ``/users/delta`` followed page by page through ``@odata.nextLink``
until a page carries ``@odata.deltaLink``; the next round starts from that
link and returns only the users created, changed or deleted since. The first
round (no link) is the full listing, so no change can fall between a listing
and the first delta. Graph chooses the page size (users delta takes no
``$top``). A changed user comes back with every property the first request
selected (``Prefer: return=minimal`` is not sent), so the addresses of a page
are the user's complete set; a deleted one (soft or hard) as ``@removed``.

A link Graph no longer accepts (delta links of directory objects live seven
days; Graph answers 400 ``syncStateNotFound`` or 410) raises ``DeltaExpired``:
the caller starts a full round again. An answer we will not follow (a link
outside ``graph.base_url``, where the bearer token must not go; a page over
``MAX_PAGE_BYTES``: pages selecting ``proxyAddresses`` run to megabytes) raises
``DeltaRefused``: asking again soon would get the same, so the caller waits for
its schedule, and the circuit breaker guarding avatar traffic never hears of
it. Needs ``User.Read.All`` (``proxyAddresses`` is not a basic property).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import GraphError, GraphNotFound, GraphUnavailable
from ..models import Subject
from .client import GraphClient
from .replies import UnusableAnswer

DELTA_PATH = "/users/delta"
SELECT = "$select=id,mail,userPrincipalName,proxyAddresses"
# A user can carry hundreds of proxyAddresses (x500: entries from migrations) of
# ~100 bytes each: a page of a few hundred such users is several megabytes.
MAX_PAGE_BYTES = 32 * 1024 * 1024
OPERATION = "users delta"  # replies reads its 410 and oversize answers by this name
_GUID = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")


class DeltaExpired(GraphError):
    """Graph no longer accepts a delta link (or it is another Graph root's): resync."""


class DeltaRefused(GraphError):
    """An answer of Graph's this round will not follow (a link outside Graph's root, a
    page over ``MAX_PAGE_BYTES``): a fault that asking again soon would not fix."""


@dataclass(frozen=True, slots=True)
class UserAddresses:
    """One user of a page: their addresses now (lower case), none when removed."""

    object_id: str
    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class DeltaPage:
    """A page's users, and either the next page's link or the next round's."""

    users: tuple[UserAddresses, ...]
    next_link: str | None
    delta_link: str | None


async def delta_page(graph: GraphClient, link: str | None) -> DeltaPage:
    """The page ``link`` names (a nextLink, or a deltaLink starting a round); without
    one, the first page of a full round."""
    if link is None:
        path, query = DELTA_PATH, SELECT
    else:
        path, query = _relative(graph, link)
    try:
        data = await graph.get_json(OPERATION, Subject(DELTA_PATH), path, query, MAX_PAGE_BYTES)
    except GraphNotFound as exc:
        if link is None:
            raise
        # Graph answered a link it gave us with "no such thing" (400 syncStateNotFound,
        # 410 Gone): it has forgotten it.
        raise DeltaExpired(f"{OPERATION}: link no longer accepted ({exc.code or exc})") from exc
    except UnusableAnswer as exc:
        raise DeltaRefused(f"{exc} of {MAX_PAGE_BYTES // 2**20} MiB") from exc
    values = data.get("value")
    users = tuple(user for item in (values if isinstance(values, list) else [])
                  if (user := _user(item)) is not None)
    next_link, delta_link = (_link(graph, data.get(name))
                             for name in ("@odata.nextLink", "@odata.deltaLink"))
    if next_link is None and delta_link is None:
        raise GraphUnavailable(f"{OPERATION}: a page with neither a next nor a delta link")
    return DeltaPage(users, next_link, None if next_link else delta_link)


def _relative(graph: GraphClient, link: str) -> tuple[str, str]:
    """``link`` as (path, query) under our Graph root. The token goes with the request:
    only ever to our own root; a link stored for another one starts over."""
    root = graph.base_url.rstrip("/")
    if not link.startswith(root + "/"):
        raise DeltaExpired(f"{OPERATION}: the stored link is not under {root}")
    path, _, query = link[len(root):].partition("?")
    return path, query


def _link(graph: GraphClient, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if not value.startswith(graph.base_url.rstrip("/") + "/"):
        raise DeltaRefused(f"{OPERATION}: Graph sent a link outside graph.base_url")
    return value


def _user(item: Any) -> UserAddresses | None:
    """A page's entry; None if it names no user we could index."""
    if not isinstance(item, dict):
        return None
    object_id = item.get("id")
    if not isinstance(object_id, str) or not _GUID.fullmatch(object_id):
        return None
    if "@removed" in item:
        return UserAddresses(object_id.lower(), frozenset())
    found = [item.get("mail"), item.get("userPrincipalName")]
    aliases = item.get("proxyAddresses")
    if isinstance(aliases, list):
        # SMTP: (primary) and smtp: (aliases); not x500:, sip:, eum:...
        found += [a[5:] for a in aliases if isinstance(a, str) and a[:5].lower() == "smtp:"]
    addresses = frozenset(a.strip().lower() for a in found if isinstance(a, str) and a.strip())
    return UserAddresses(object_id.lower(), addresses)
