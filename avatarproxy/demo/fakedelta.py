"""The fake tenant's users delta query (``/users/delta``), as the Graph reference has it.

``DeltaLog`` remembers when each user last changed or was deleted (a sequence
number: ``FakeTenant`` records every ``add``, ``change`` and ``remove``) and
answers a round: without a token, every user (the full sync); with
``$deltatoken``, the users changed since, in their current state, and the
deleted ones as ``{"id", "@removed": {"reason": "deleted"}}``. Pages hold
``page_size`` users and end with ``@odata.nextLink`` (``$skiptoken``), the last
with ``@odata.deltaLink``. The tokens carry the round's ``$select``, as Graph's
do. A token handed out before ``expire_tokens`` is refused the way Graph
refuses a delta link over seven days old: 400 ``syncStateNotFound``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .graphanswers import error_response, json_response
from .people import FakePerson

_FIELDS = {"id": "object_id", "mail": "mail", "userprincipalname": "upn",
           "proxyaddresses": "proxy_addresses", "displayname": "display_name"}
_GRAPH_NAMES = {"id": "id", "mail": "mail", "userprincipalname": "userPrincipalName",
                "proxyaddresses": "proxyAddresses", "displayname": "displayName"}
_EXPIRED = ("syncStateNotFound", "The sync state generation is not found. The delta token is "
            "expired and data must be synchronized again.")


class DeltaLog:
    """When each user changed; ``answer`` serves ``/users/delta`` from it."""

    def __init__(self) -> None:
        self.sequence = 0
        self._changed: dict[str, int] = {}  # object id -> sequence of its last change
        self._removed: dict[str, int] = {}  # object id -> sequence of its deletion
        self._epoch = 0  # tokens of an earlier epoch are refused (expired)
        self.page_size = 100
        # A round's entries, built once for all its pages (a large tenant has hundreds).
        self._round: tuple[tuple[int, int, int, str], list[dict[str, Any]]] | None = None

    def record(self, object_id: str, *, removed: bool = False) -> None:
        self.sequence += 1
        key = object_id.lower()
        (self._removed if removed else self._changed)[key] = self.sequence
        (self._changed if removed else self._removed).pop(key, None)

    def expire_tokens(self) -> None:
        """Every delta link handed out so far is refused from now on."""
        self._epoch += 1

    def answer(self, root: str, people: Callable[[], Iterable[FakePerson]],
               query: dict[str, list[str]]) -> web.Response:
        """``people()``: the tenant's users now (asked once a round, not once a page)."""
        skip, delta = query.get("$skiptoken"), query.get("$deltatoken")
        try:
            epoch = self._epoch
            if skip:
                epoch, since, upto, offset, select = _read(skip[0])
            elif delta:
                epoch, since, upto, offset, select = _read(delta[0])
                since, upto = upto, self.sequence  # a new round: what changed after the last
        except (ValueError, TypeError):
            return error_response(400, "BadRequest", "Invalid state token.")
        if not skip and not delta:
            since, upto, offset = -1, self.sequence, 0
            select = ",".join(query.get("$select", [])) or "id,displayName,userPrincipalName"
        if epoch != self._epoch:
            return error_response(400, *_EXPIRED)
        unknown = [f for f in select.split(",") if f.strip().lower() not in _FIELDS]
        if unknown:
            return error_response(400, "Request_BadRequest", f"Could not find a property "
                                  f"named '{unknown[0]}' on type 'microsoft.graph.user'.")
        round_key = (since, upto, self.sequence, select)
        if self._round is None or self._round[0] != round_key:
            self._round = (round_key, self._entries(people(), since, upto, select))
        entries = self._round[1]
        page = entries[offset:offset + self.page_size]
        body: dict[str, Any] = {"@odata.context": f"{root}/$metadata#users({select})",
                                "value": page}
        if offset + self.page_size < len(entries):
            token = self._token(since, upto, offset + self.page_size, select)
            body["@odata.nextLink"] = f"{root}/users/delta?$skiptoken={token}"
        else:
            body["@odata.deltaLink"] = (f"{root}/users/delta?$deltatoken="
                                        f"{self._token(since, upto, 0, select)}")
        return json_response(body)

    def _token(self, since: int, upto: int, offset: int, select: str) -> str:
        return quote(json.dumps([self._epoch, since, upto, offset, select],
                                separators=(",", ":")), safe="")

    def _entries(self, people: Iterable[FakePerson], since: int, upto: int,
                 select: str) -> list[dict[str, Any]]:
        current = sorted(people, key=lambda p: p.object_id)
        if since < 0:  # the full sync: everyone there is, nobody removed
            return [_user(p, select) for p in current]
        changed = [_user(p, select) for p in current
                   if since < self._changed.get(p.object_id.lower(), 0) <= upto]
        removed = [{"id": oid, "@removed": {"reason": "deleted"}}
                   for oid, at in sorted(self._removed.items()) if since < at <= upto]
        return changed + removed


def _user(person: FakePerson, select: str) -> dict[str, Any]:
    """The selected properties; one never set is left out, as Graph does."""
    entry: dict[str, Any] = {"id": person.object_id}
    for name in select.split(","):
        key = name.strip().lower()
        value = getattr(person, _FIELDS[key])
        if value:
            entry[_GRAPH_NAMES[key]] = list(value) if isinstance(value, tuple) else value
    return entry


def _read(token: str) -> tuple[int, int, int, int, str]:
    epoch, since, upto, offset, select = json.loads(token)
    return int(epoch), int(since), int(upto), int(offset), str(select)
