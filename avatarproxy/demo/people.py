"""Directory objects of a fake tenant: people (with their mailbox's contacts) and groups,
each with a photo or none."""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass, field

from PIL import Image

from .photos import RawPhoto, available_sizes


@dataclass(eq=False)
class FakePerson:
    """One directory user. ``photo`` is the master image, any dimensions.

    A square master of an HD side is an Exchange photo: every HD size up to
    its side is available. Anything else is an Entra-only photo: only its
    own dimensions exist. ``placeholder`` (no photo) makes the metadata call
    answer the documented ``1x1`` JSON instead of 404. ``capital_x`` spells
    ids ``240X240``: Graph sends both spellings. ``raw`` (instead of ``photo``)
    serves exact bytes at the sizes it lists.
    """

    upn: str
    object_id: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    photo: Image.Image | None = None
    placeholder: bool = False
    media_etag: str = ""
    capital_x: bool = False
    mail: str | None = None
    proxy_addresses: tuple[str, ...] = ()  # "SMTP:primary@x", "smtp:alias@x"
    account_enabled: bool = True
    raw: RawPhoto | None = None
    contacts: dict[str, FakeContact] = field(default_factory=dict)  # by contact id

    def __post_init__(self) -> None:
        if (self.photo is not None or self.raw is not None) and not self.media_etag:
            self.media_etag = media_etag(self.object_id, 0)

    def size_id(self, width: int, height: int) -> str:
        return f"{width}{'X' if self.capital_x else 'x'}{height}"

    def sizes(self) -> list[tuple[int, int]]:
        """Available sizes, smallest first; empty without a photo."""
        if self.raw is not None:
            return sorted(self.raw.bodies, key=lambda size: size[0] * size[1])
        return available_sizes(self.photo)


class _OneVersion:
    """A group's or a contact's photo: its mediaEtag made from its id, sizes spelt ``WxH``."""

    object_id: str
    photo: Image.Image | None
    media_etag: str

    def __post_init__(self) -> None:
        if self.photo is not None and not self.media_etag:
            self.media_etag = media_etag(self.object_id, 0)

    def size_id(self, width: int, height: int) -> str:
        return f"{width}x{height}"


@dataclass(eq=False)
class FakeGroup(_OneVersion):
    """A Microsoft 365 group; with ``team`` it is also a team (same object id).

    A group's photo comes in the HD sizes like an Exchange photo; through
    ``/teams/{id}`` only the largest is reachable.
    """

    object_id: str
    display_name: str
    photo: Image.Image | None = None
    team: bool = False
    media_etag: str = ""
    placeholder: bool = False
    capital_x: bool = False

    def sizes(self) -> list[tuple[int, int]]:
        return available_sizes(self.photo)


@dataclass(eq=False)
class FakeContact(_OneVersion):
    """An Outlook contact kept in one person's mailbox.

    ``object_id`` is its id, URL-safe base64 as Graph writes them (case
    matters). Graph offers only the largest photo of a contact.
    """

    object_id: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    photo: Image.Image | None = None
    media_etag: str = ""
    placeholder: bool = False

    def sizes(self) -> list[tuple[int, int]]:
        return [self.photo.size] if self.photo is not None else []


PhotoOwner = FakePerson | FakeGroup | FakeContact


def contact_id(seed: str) -> str:
    """A contact id shaped like Graph's (``AAMkAD...AAA=``), fixed for ``seed``."""
    digest = hashlib.sha256(seed.encode()).digest() * 3
    return "AAMkAD" + base64.urlsafe_b64encode(digest[:70]).decode().rstrip("=") + "AAA="


def media_etag(object_id: str, generation: int) -> str:
    """A mediaEtag as Graph spells one: a quoted hex string, new for each photo version."""
    return f'"{zlib.crc32(f"{object_id}/{generation}".encode()):08X}"'
