"""A fake tenant's directory, and what Graph answers about it.

``FakeTenant`` holds people and groups and answers a Graph path (already
decoded into segments) as the profilePhoto and user reference pages
describe, quirks included: ids spelled ``240X240`` or ``240x240``, the ``1x1``
answer for a size that is absent, the OData key form ``/users('...')``, the
few ``$filter`` forms avatarproxy sends, paged listings, users delta query
(``fakedelta``: ``change`` and ``remove`` a person between rounds), and a 403 for
a call needing an application permission the tenant ``denied``. ``FakeGraph``
serves it over HTTP.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from PIL import Image

from .fakedelta import DeltaLog
from .graphanswers import (
    DEFAULT_ERRORS,
    ONE_PIXEL_GIF,
    REAL_ERRORS,
    contact_response,
    error_response,
    image_not_found,
    json_response,
    meta_json,
    user_response,
)
from .people import FakeGroup, FakePerson, PhotoOwner, media_etag
from .photos import RawPhoto

_SIZE_ID = re.compile(r"^([1-9][0-9]{0,4})[xX]([1-9][0-9]{0,4})$")
_KEY_FORM = re.compile(r"^users\((.*)\)$", re.DOTALL)


class FakeTenant:
    """People and groups; ``answer`` says what Graph answers about them."""

    def __init__(self, people: Iterable[FakePerson] = ()) -> None:
        self._people: dict[str, FakePerson] = {}
        self._groups: dict[str, FakeGroup] = {}
        self._jpegs: dict[tuple[str, str, int, int], bytes] = {}
        self._generation = 0
        # Application permissions the app registration lacks: calls needing
        # one of them answer 403 (see ``_required_permissions``).
        self.denied: set[str] = set()
        # Mailboxes (UPNs or ids) whose contacts Exchange lets the app read; None: all.
        self.contacts_scope: set[str] | None = None
        self.page_size = 100  # users per page of the /users listing
        self.delta = DeltaLog()  # what /users/delta answers; its own page_size
        for person in people:
            self.add(person)

    def add(self, person: FakePerson) -> FakePerson:
        # UPNs and object ids both match case-insensitively in Entra ID.
        self._people[person.upn.lower()] = person
        self._people[person.object_id.lower()] = person
        self.delta.record(person.object_id)
        return person

    def change(self, upn_or_id: str, **fields: object) -> FakePerson:
        """Set a person's fields (``mail``, ``proxy_addresses``...), as an admin would:
        the next users delta round reports them."""
        person = self.person(upn_or_id)
        self._people.pop(person.upn.lower(), None)  # the UPN may be one of the fields
        for name, value in fields.items():
            setattr(person, name, value)
        return self.add(person)

    def remove(self, upn_or_id: str) -> None:
        """Delete a person: gone from every answer, reported by users delta as removed."""
        person = self.person(upn_or_id)
        self._people.pop(person.upn.lower(), None)
        self._people.pop(person.object_id.lower(), None)
        self.delta.record(person.object_id, removed=True)

    def person(self, upn_or_id: str) -> FakePerson:
        return self._people[upn_or_id.lower()]

    @property
    def people(self) -> list[FakePerson]:
        return list({id(p): p for p in self._people.values()}.values())

    def find(self, predicate: Callable[[FakePerson], bool]) -> FakePerson:
        """The first person matching; LookupError if none does."""
        for person in self.people:
            if predicate(person):
                return person
        raise LookupError("no such person in the fake tenant")

    def set_photo(self, upn_or_id: str, image: Image.Image | None) -> str:
        """Replace (or remove) a photo; returns the new mediaEtag ("" when removed)."""
        person = self.person(upn_or_id)
        self._generation += 1
        person.photo = image
        person.media_etag = media_etag(person.object_id, self._generation) if image else ""
        self._jpegs = {k: v for k, v in self._jpegs.items() if k[0] != person.object_id}
        person.raw = None
        return person.media_etag

    def set_raw_photo(self, upn_or_id: str, raw: RawPhoto) -> str:
        """Serve exact bytes as the person's photo; returns the new mediaEtag."""
        self.set_photo(upn_or_id, None)
        person = self.person(upn_or_id)
        person.raw = raw
        person.media_etag = media_etag(person.object_id, self._generation)
        return person.media_etag

    def add_group(self, group: FakeGroup) -> FakeGroup:
        self._groups[group.object_id.lower()] = group
        return group

    def group(self, object_id: str) -> FakeGroup:
        return self._groups[object_id.lower()]

    def answer(self, root: str, segments: list[str], query: dict[str, list[str]]) -> web.Response:
        """Graph's answer to a GET of ``segments`` (decoded, after the version) with
        ``query``; ``root`` is the version's URL, for ``@odata.context``."""
        required = _required_permissions(segments, query)
        if required and all(permission in self.denied for permission in required):
            return error_response(403, "Authorization_RequestDenied", DEFAULT_ERRORS[403][1])
        if segments and segments[0] in ("groups", "teams"):
            return self._answer_group(root, segments)
        if segments == ["users"]:
            return self._list_users(root, query)
        if segments == ["users", "delta"]:
            return self.delta.answer(root, lambda: self.people, query)
        found = _parse_user(segments)
        if isinstance(found, web.Response):
            return found
        key, tail = found
        person = self._people.get(key.lower())
        if person is None:
            return error_response(404, "Request_ResourceNotFound", f"Resource '{key}' does not "
                                  "exist or one of its queried reference-property objects are "
                                  "not present.")
        match tail:
            case []:
                return user_response(root, person, query.get("$select", []))
            case ["photo"]:
                return self._largest_meta(root, person)
            case ["photo", "$value"]:
                if not person.sizes():
                    return image_not_found()
                return self._jpeg_response(person, *person.sizes()[-1])
            case ["photos"]:
                return self._list_meta(root, person)
            case ["photos", size] | ["photos", size, "$value"]:
                parsed = _SIZE_ID.match(size)
                if parsed is None:
                    return error_response(400, "BadRequest", f"Invalid photo size '{size}'.")
                wanted = (int(parsed[1]), int(parsed[2]))
                return self._sized(root, person, wanted, value=len(tail) == 3)
            case ["contacts", contact, *rest]:
                return self._answer_contact(root, person, contact, rest, query)
        return error_response(400, "BadRequest", f"Resource not found for the segment '{tail[0]}'.")

    def _answer_contact(self, root: str, person: FakePerson, key: str, tail: list[str],
                        query: dict[str, list[str]]) -> web.Response:
        """``/users/{mailbox}/contacts/{id}...``: the contact, its photo's metadata and
        its largest photo; Graph has no sized photos for contacts."""
        scope = self.contacts_scope
        if scope is not None and not {person.upn.lower(), person.object_id} & scope:
            # What Exchange answers outside the scope an app was given.
            return error_response(403, "ErrorAccessDenied", "Access to OData is disabled: "
                                  "[RAOP] : Blocked by tenant configured AppOnly AccessPolicy "
                                  "settings.")
        contact = person.contacts.get(key)  # an id's case matters: it is base64
        if contact is None:
            return error_response(*REAL_ERRORS["item-not-found"])
        match tail:
            case []:
                return contact_response(root, person, contact, query.get("$select", []))
            case ["photo"]:
                return self._largest_meta(root, contact)
            case ["photo", "$value"] if contact.sizes():
                return self._jpeg_response(contact, *contact.sizes()[-1])
            case ["photo", "$value"]:
                return error_response(*REAL_ERRORS["item-not-found"])
            case ["photos", *_]:  # microsoft-graph-docs #4153
                return error_response(400, "BadRequest", "Unsupported segment type.")
        return error_response(400, "BadRequest", f"Resource not found for the segment '{tail[0]}'.")

    def _largest_meta(self, root: str, person: PhotoOwner) -> web.Response:
        sizes = person.sizes()
        if sizes:
            return json_response(meta_json(root, person, *sizes[-1]))
        if person.placeholder:
            # The documented "no photo" answer; many real tenants send 404 instead.
            return json_response(meta_json(root, person, 1, 1, content_type="image/gif", etag=""))
        return image_not_found()

    def _list_meta(self, root: str, person: FakePerson) -> web.Response:
        if not person.sizes():
            return image_not_found()
        entries = [meta_json(root, person, w, h, context=False) for w, h in person.sizes()]
        context = f"{root}/$metadata#users('{person.object_id}')/photos"
        return json_response({"@odata.context": context, "value": entries})

    def _sized(self, root: str, person: PhotoOwner, wanted: tuple[int, int],
               *, value: bool) -> web.Response:
        sizes = person.sizes()
        if not sizes and not person.placeholder:
            return image_not_found()
        if wanted in sizes:
            if value:
                return self._jpeg_response(person, *wanted)
            return json_response(meta_json(root, person, *wanted))
        if value and not sizes:
            return image_not_found()
        # "If the specified size is unavailable ... the size 1x1 is returned
        # with the rest of the metadata": so the mediaEtag stays.
        if value:
            return web.Response(body=ONE_PIXEL_GIF, content_type="image/gif")
        return json_response(meta_json(root, person, 1, 1, content_type="image/gif"))

    def _jpeg_response(self, person: PhotoOwner, width: int, height: int) -> web.Response:
        if isinstance(person, FakePerson) and person.raw is not None:
            return person.raw.response(width, height)
        key = (person.object_id, person.media_etag, width, height)
        body = self._jpegs.get(key)
        if body is None:
            assert person.photo is not None
            image = person.photo.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            body = self._jpegs[key] = buffer.getvalue()
        return web.Response(body=body, content_type="image/jpeg")

    def _answer_group(self, root: str, segments: list[str]) -> web.Response:
        kind, key, tail = segments[0], (segments[1:2] or [""])[0], segments[2:]
        group = self._groups.get(key.lower())
        if group is None or (kind == "teams" and not group.team):
            return error_response(404, "Request_ResourceNotFound",
                                  f"Resource '{key}' does not exist.")
        match tail:
            case []:
                return json_response({"@odata.context": f"{root}/$metadata#{kind}/$entity",
                                      "id": group.object_id, "displayName": group.display_name})
            case ["photo"]:
                return self._largest_meta(root, group)
            case ["photo", "$value"] if group.sizes():
                return self._jpeg_response(group, *group.sizes()[-1])
            case ["photo", "$value"]:
                return image_not_found()
            case ["photos", size] | ["photos", size, "$value"] if kind == "groups":
                parsed = _SIZE_ID.match(size)
                if parsed is None:
                    return error_response(400, "BadRequest", f"Invalid photo size '{size}'.")
                wanted = (int(parsed[1]), int(parsed[2]))
                return self._sized(root, group, wanted, value=len(tail) == 3)
        # Teams have no /photos navigation: only the largest photo.
        return error_response(400, "BadRequest", f"Resource not found for the segment '{tail[0]}'.")

    def _list_users(self, root: str, query: dict[str, list[str]]) -> web.Response:
        """``/users`` with ``$filter``, ``$select``, ``$top``; pages via ``@odata.nextLink``."""
        people = sorted(self.people, key=lambda p: p.object_id)
        expression = ",".join(query.get("$filter", []))
        if expression:
            matches = _user_filter(expression)
            if matches is None:
                return error_response(400, "Request_UnsupportedQuery",
                                      f"Unsupported or invalid query filter clause: {expression}")
            people = [p for p in people if matches(p)]
        top = min(999, int((query.get("$top") or ["100"])[0]), self.page_size)
        start = int((query.get("$skiptoken") or ["0"])[0])
        values = []
        for person in people[start:start + top]:
            selected = user_response(root, person, query.get("$select", []))
            if selected.status != 200:
                return selected
            body = json.loads(selected.body)  # type: ignore[arg-type]
            body.pop("@odata.context", None)
            values.append(body)
        page: dict[str, Any] = {"@odata.context": f"{root}/$metadata#users", "value": values}
        if start + top < len(people):
            rest = {k: v for k, v in query.items() if k != "$skiptoken"}
            rest["$skiptoken"] = [str(start + top)]
            page["@odata.nextLink"] = f"{root}/users?" + urlencode(rest, doseq=True,
                                                                    quote_via=quote)
        return json_response(page)


_FILTER_CLAUSES: tuple[tuple[re.Pattern[str],
                             Callable[[re.Match[str], FakePerson], bool]], ...] = (
    (re.compile(r"^accountEnabled eq (true|false)$", re.I),
     lambda m, p: p.account_enabled == (m[1].lower() == "true")),
    (re.compile(r"^mail eq '((?:[^']|'')*)'$", re.I),
     lambda m, p: (p.mail or "").lower() == m[1].replace("''", "'").lower()),
    (re.compile(r"^proxyAddresses/any\((\w+):\1 eq '((?:[^']|'')*)'\)$", re.I),
     lambda m, p: m[2].replace("''", "'").lower() in (a.lower() for a in p.proxy_addresses)),
)


def _user_filter(expression: str) -> Callable[[FakePerson], bool] | None:
    """The few ``$filter`` forms avatarproxy sends, joined by ``or``; None if unsupported."""
    tests: list[tuple[Callable[[re.Match[str], FakePerson], bool], re.Match[str]]] = []
    for clause in re.split(r"\s+or\s+", expression.strip()):
        for pattern, test in _FILTER_CLAUSES:
            found = pattern.match(clause.strip())
            if found is not None:
                tests.append((test, found))
                break
        else:
            return None
    return lambda person: any(test(found, person) for test, found in tests)


def _required_permissions(segments: list[str], query: dict[str, list[str]]) -> tuple[str, ...]:
    """Application permissions that allow a call (any one of them suffices)."""
    head = segments[0] if segments else ""
    photo = any(segment in ("photo", "photos") for segment in segments[1:3])
    if head.startswith("users") and "contacts" in segments[1:3]:
        return ("Contacts.Read", "Contacts.ReadWrite")
    if head == "teams":
        return ("Team.ReadBasic.All",)
    if head == "groups":
        return (("ProfilePhoto.Read.All",) if photo
                else ("Group.Read.All", "GroupMember.Read.All"))
    if segments == ["users", "delta"]:
        return ("User.Read.All",)  # proxyAddresses is not a basic property
    if segments == ["users"]:
        if "accountenabled" in ",".join(query.get("$filter", [])).lower():
            return ("User.Read.All",)  # filtering on accountEnabled needs the full profile
        return ("User.ReadBasic.All", "User.Read.All")
    if photo:
        return ("ProfilePhoto.Read.All",)
    return ("User.ReadBasic.All", "User.Read.All") if head.startswith("users") else ()


def _parse_user(segments: list[str]) -> tuple[str, list[str]] | web.Response:
    """``users/{key}/...`` or ``users('{key}')/...`` -> (key, rest of the path)."""
    head = segments[0] if segments else ""
    form = _KEY_FORM.match(head)
    if form is not None:
        inner = form[1]
        if len(inner) >= 2 and inner[0] == inner[-1] == "'":
            quoted = inner[1:-1]
            # Inside an OData string literal a quote is doubled; a lone one ends it.
            if "'" in quoted.replace("''", ""):
                return error_response(400, "BadRequest", f"Syntax error at position "
                                      f"{len(head)} in '{head}'.")
            inner = quoted.replace("''", "'")
        return inner, segments[1:]
    if head != "users" or len(segments) < 2 or not segments[1]:
        return error_response(400, "BadRequest", f"Resource not found for the segment '{head}'.")
    if segments[1].startswith("$"):
        # OData reads '$...' as a system segment: Graph wants users('$name') here.
        return error_response(400, "BadRequest",
                              f"Resource not found for the segment '{segments[1]}'.")
    return segments[1], segments[2:]
