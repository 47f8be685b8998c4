"""The answer to a Gravatar URL: the hash through the index to a person, or a default.

In order:

1. ``f=y`` with a default other than ``initials``: the default, nothing looked up.
2. The lookup costs the client a token (``costs.HASH_LOOKUP``), found or not,
   and a miss two more (``costs.HASH_MISS``): a miss makes no Graph call, so
   without this the rate limit would never see a client trying hashes, and
   it costs what an address nobody has costs on ``/avatar/{address}``. Over
   its rate, the client gets a plain tile, ``no-store``, whatever the hash:
   it learns nothing.
3. A hash nobody has gets the default drawn from the hash alone
   (``placeholders``; ``initials`` has no name to draw: ``mp``), or 404 for
   ``d=404``.
4. A person found is checked first against the domain and guest rules on
   their UPN (``AvatarService.check_owner``): one they refuse gets exactly
   what a hash nobody has gets (step 3: status, bytes, headers, ETag),
   blocked or not, whatever state the blocked list is in. While Graph cannot
   say whose the hash is, the answer is the default for now (``max-age=60``):
   the one state where a hash in the index differs from one nobody has.
5. Then the blocked list by every name of theirs, and the service, as
   ``/avatar/{object-id}/{size}`` answers: the caches, single flight, the rate
   limit. Their photo; without one (or blocked), their initials for
   ``d=initials``, else the default; while Graph cannot be asked, the same
   with the short max-age the object-id route gives initials then.

While the index has not completed a round, or cannot be read (Redis down), a
miss may be "not yet": its default gets the short max-age of "Graph could not
be asked".
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

from . import placeholders, tiles
from .answers import TRANSIENT_MAX_AGE
from .costs import HASH_LOOKUP, HASH_MISS, Admit, admitted, render_cost
from .errors import Blocked, NotFound, Overloaded, RateLimited, RefusedPerson
from .gravatar import HashRequest
from .hashindex import HashIndex, IndexUnavailable
from .imaging import CONTENT_TYPES
from .models import Avatar, StandIn, Subject
from .negotiation import OutputFormats
from .security import Policy
from .service import AvatarService

log = logging.getLogger(__name__)

# Defaults kept drawn in this process: mp is the same for every hash (one per size and
# format), an identicon a few hundred bytes; mp at 1024 px is the largest, 36 KB.
_DRAWN_BYTES = 4 * 1024 * 1024


class HashAvatars:
    """Answers ``HashRequest``s; ``max_age``: ``cache.initials_max_age`` (a default is
    what initials are for a UPN: the person may yet be indexed or add a photo)."""

    def __init__(self, service: AvatarService, policy: Policy, index: HashIndex,
                 max_age: int) -> None:
        self._service = service
        self._policy = policy
        self._index = index
        self._max_age = max_age
        self._drawn: OrderedDict[tuple[str, bytes, int, str], bytes] = OrderedDict()
        self._drawn_bytes = 0

    @property
    def index(self) -> HashIndex:
        return self._index

    async def answer(self, ask: HashRequest, formats: OutputFormats, admit: Admit, *,
                     foreign: bool = False) -> Avatar:
        """The picture for ``ask``; ``NotFound`` for ``d=404`` without one. ``foreign``:
        another website's page, which must not learn from a 404 who has no photo."""
        default = "mp" if foreign and ask.default == "404" else ask.default
        if ask.force_default and default != "initials":
            return await self._default(ask, default, formats, admit)
        if not await admitted(admit, HASH_LOOKUP):
            return self.limited(ask, default)
        try:
            object_id = await self._index.lookup(ask.digest)
        except IndexUnavailable:
            return await self._nobody(ask, default, formats, admit, transient=True)
        if object_id is None:
            return await self._nobody(ask, default, formats, admit)
        subject = Subject(object_id)
        try:
            return await self._person(subject, ask, default, formats, admit)
        except RefusedPerson:
            return await self._nobody(ask, default, formats, admit)
        except RateLimited:
            return self.limited(ask, default)
        except Overloaded:
            return self.limited(ask, default, "overload")
        except TimeoutError:
            return self.limited(ask, default, "deadline")

    async def _nobody(self, ask: HashRequest, default: str, formats: OutputFormats,
                      admit: Admit, *, transient: bool = False) -> Avatar:
        """What a hash nobody has gets, and so does a person the rules refuse."""
        if not await admitted(admit, HASH_MISS):
            return self.limited(ask, default)
        return await self._default(ask, _nameless(default), formats, admit,
                                   transient=transient or not self._index.ready)

    async def _person(self, subject: Subject, ask: HashRequest, default: str,
                      formats: OutputFormats, admit: Admit) -> Avatar:
        """``RefusedPerson`` when the rules refuse them (``_nobody``'s answer then)."""
        try:
            if not await self._owner_known(subject, admit):
                # Whether they are refused cannot be told: no initials (they would show
                # someone is there), the default for now.
                raise NotFound(transient=True)
            self._policy.check_blocked(subject)
            if ask.force_default:  # d=initials: the person's, never their photo
                raise Blocked()
            result = await self._service.get_avatar(
                subject, ask.size, formats=formats, fallback=default == "initials", admit=admit)
        except Blocked as exc:  # as if without a photo
            if default != "initials":
                return await self._default(ask, default, formats, admit,
                                           transient=exc.transient or not self._index.ready)
            result = await self._service.initials_only(subject, ask.size, formats,
                                                       transient=exc.transient, admit=admit)
        except RefusedPerson:
            raise
        except NotFound as exc:  # no photo (d is not initials), or Graph cannot say now
            return await self._default(ask, _nameless(default), formats, admit,
                                       transient=exc.transient or not self._index.ready)
        # Over the client's rate or a cap, the service draws stand-in initials from the
        # key it was given, here an object id: the default tile says as much, and no more.
        return self.limited(ask, default, result.stand_in) if result.stand_in else result

    async def _owner_known(self, subject: Subject, admit: Admit) -> bool:
        """Before the blocked list and the photo, when the rules need the person's UPN:
        ``RefusedPerson`` if they refuse them (or Graph names nobody for the id), False
        if Graph cannot say whose it is now."""
        if not self._policy.screens(subject):
            return True
        try:
            return await self._service.check_owner(subject, admit)
        except NotFound as exc:
            raise RefusedPerson() from exc

    async def _default(self, ask: HashRequest, kind: str, formats: OutputFormats,
                       admit: Admit, *, transient: bool = False) -> Avatar:
        if kind == "404":
            raise NotFound()
        kind = kind if kind in placeholders.KINDS else "mp"
        fmt = _default_format(kind, ask, formats)
        key = (kind, ask.digest if kind == "identicon" else b"", ask.size, fmt)
        body = self._drawn.get(key)
        if body is None:
            # Any size anyone asks for is a render: paid for like initials.
            if not await admitted(admit, render_cost(ask.size)):
                return self.limited(ask, kind)
            try:
                body = await self._service.draw(placeholders.draw, *key)
            except Overloaded:
                return self.limited(ask, kind, "overload")
            self._remember(key, body)
        else:
            self._drawn.move_to_end(key)
        return Avatar(body, CONTENT_TYPES[fmt], _etag(*key), "default",
                      min(TRANSIENT_MAX_AGE, self._max_age) if transient else self._max_age)

    def limited(self, ask: HashRequest, default: str,
                why: StandIn = "rate-limited") -> Avatar:
        """A plain tile of the silhouette's background at the size asked (transparent
        ``blank`` aside: the same tile), never stored: for a client over its rate,
        or past a cap (``why``). ``NotFound`` for ``d=404``."""
        if default == "404":
            raise NotFound()
        body = tiles.png(ask.size, placeholders.MP_BACKGROUND)
        return Avatar(body, CONTENT_TYPES["png"], _etag("tile", b"", ask.size, "png"),
                      "default", 0, stand_in=why)

    def _remember(self, key: tuple[str, bytes, int, str], body: bytes) -> None:
        """Keep ``body`` drawn, least recently used out first past ``_DRAWN_BYTES``."""
        if key in self._drawn:
            return  # drawn twice at once: the first copy stays
        self._drawn[key] = body
        self._drawn_bytes += len(body)
        while self._drawn_bytes > _DRAWN_BYTES:
            self._drawn_bytes -= len(self._drawn.popitem(last=False)[1])


def _default_format(kind: str, ask: HashRequest, formats: OutputFormats) -> str:
    """A ``.jpg`` URL's default is a JPEG (the tool stores it under that name), but
    ``blank``, transparent, stays PNG; else lossless, as initials."""
    if ask.format == "jpeg" and kind != "blank":
        return "jpeg"
    return formats.initials if formats.initials in ("png", "webp") else "png"


def _nameless(default: str) -> str:
    """The default when there is no name to draw initials from."""
    return "mp" if default == "initials" else default


def _etag(kind: str, digest: bytes, size: int, fmt: str) -> str:
    text = "\x1f".join(("default", kind, digest.hex(), str(size), fmt, placeholders.VERSION))
    return '"' + hashlib.sha256(text.encode("ascii")).hexdigest()[:27] + '"'
