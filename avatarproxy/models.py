"""Frozen values that cross module boundaries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

# "default": a Gravatar default image (``placeholders``), drawn from a hash alone.
Source = Literal["photo", "initials", "default"]
# Why an answer is a stand-in for this moment only (``X-Avatar-Stand-In``): the
# service's own trouble (a load cap, the deadline, an error of ours) or the client's
# pace. A cache in front keeps serving the copy it holds for the first, never for the
# second: one client's rate must not decide what everyone else gets.
StandIn = Literal["overload", "deadline", "error", "rate-limited"]
# What kind of object: users by UPN or id, groups and teams by id; an Outlook
# contact by its id in one mailbox.
SubjectKind = Literal["user", "group", "team", "contact"]
# Kinds Graph keeps one photo of, the largest: no /photos/{size} (for contacts it
# answers "Unsupported segment type", microsoft-graph-docs #4153).
ONE_PHOTO: tuple[SubjectKind, ...] = ("team", "contact")

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose avatar: a userPrincipalName or object id, normalised to lower case.

    UPNs and GUIDs compare case-insensitively in Entra ID, so one person is
    one cache entry whatever case a page writes. Groups and teams are
    addressed by object id; a team has its group's id but only one photo
    size, so ``cache_id`` keeps each kind's entries apart. A contact's ``key``
    is its id as Graph gives it (case matters: it is base64) and ``mailbox``
    the UPN or object id of the mailbox holding it.
    """

    key: str
    kind: SubjectKind = "user"
    mailbox: str = ""

    @property
    def cache_id(self) -> str:
        if self.kind == "contact":
            return f"contact:{self.mailbox}:{self.key}"
        return self.key if self.kind == "user" else f"{self.kind}:{self.key}"

    @property
    def is_object_id(self) -> bool:
        return _GUID.fullmatch(self.key) is not None

    @property
    def local_part(self) -> str:
        """The UPN before ``@``; for a guest, their own mailbox name.

        A guest's UPN is ``john_fabrikam.com#EXT#@tenant.onmicrosoft.com``:
        their address with ``@`` turned into ``_``, then ``#EXT#``. A contact
        has none: its mailbox's owner is somebody else.
        """
        if self.kind == "contact":
            return ""
        local = self.key.split("@", 1)[0]
        if "#ext#" in local:
            local = local.split("#ext#", 1)[0].rsplit("_", 1)[0]
        return local


@dataclass(frozen=True, slots=True)
class Identity:
    """A directory user by the names a page may use for them, all in lower case.

    ``addresses`` are ``mail`` and the ``smtp:`` aliases of ``proxyAddresses``
    (empty when the answer did not include them). ``NOBODY`` stands for "no
    user has this name", which is cached like an answer.
    """

    object_id: str
    upn: str
    addresses: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name in (self.object_id, self.upn, *self.addresses) if name)


NOBODY = Identity("", "")


@dataclass(frozen=True, slots=True)
class Profile:
    """The few directory fields initials need, and for a user asked for by object id
    whose the id is (``upn``: the guest and domain rules apply to it; "" when Graph
    would not say; None when not asked)."""

    object_id: str | None = None
    display_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    upn: str | None = None


@dataclass(frozen=True, slots=True)
class PhotoMeta:
    """What Graph says about a subject's photo (its largest size) and name.

    ``media_etag`` changes whenever the photo changes; it keys the image cache.
    ``profile`` is only fetched when initials may be needed.
    """

    has_photo: bool
    media_etag: str = ""
    width: int = 0
    height: int = 0
    profile: Profile | None = None
    fetched_at: float = 0.0


class Avatar(NamedTuple):
    """An encoded image ready to send.

    Immutable like the others, but a named tuple: one is built for every hit, and
    a frozen dataclass's ``__init__`` (a setattr per field) cost three times as much.
    """

    body: bytes
    content_type: str
    etag: str
    source: Source
    max_age: int
    stale_while_revalidate: int = 0
    stand_in: StandIn | None = None  # why an answer for this moment only: never stored

    @property
    def no_store(self) -> bool:
        return self.stand_in is not None
