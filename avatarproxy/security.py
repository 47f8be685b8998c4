"""Who may be shown, and to whom: signed URLs, allowed domains, guests, blocked people.

Decisions over ``SecuritySettings``; ``web`` asks them before the cache or
Graph is touched, and the service asks again of the person an e-mail address
or an object id turns out to be (``check_person``): policy holds for the
person, whatever name the page used. Who the blocked people are is kept
current by ``BlockedPeople``.
Signatures are HMAC-SHA256 over the request path as the page
wrote it, percent-decoded (``/avatar/adele.vance@contoso.com/48``), in URL-safe
base64 without padding. The query string is not signed: pages add cache busters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .blocking import BlockedPeople
from .errors import Blocked, ConfigError, Forbidden, NotFound, RefusedPerson
from .inputs import check_avatar_request
from .models import Identity, PhotoMeta, Subject
from .options import option, settings


@settings("security")
class SecuritySettings:
    allowed_domains: tuple[str, ...] = option(
        (),
        "UPN domains served (an object id: its owner's UPN); empty: every domain.")
    allow_guests: bool = option(
        True,
        "Serve guests (#EXT# UPNs); false: they get 404, by UPN without a Graph call.")
    url_signing_keys: tuple[str, ...] = option(
        (),
        "HMAC keys; when set, every request needs ?sig= made with one of them (the first "
        "signs, all verify).", secret=True)
    blocked: tuple[str, ...] = option(
        (),
        "UPNs or object ids that always get initials, never their photo.")
    rate_limit_per_second: float = option(
        50.0,
        "Graph calls and renders per second allowed per client address (0: no limit).", minimum=0)
    rate_limit_burst: int = option(
        500,
        "Graph calls and renders a client address may cause at once before the rate "
        "applies.", minimum=1)

# 32 bytes of SHA-256 in URL-safe base64 without "=" padding. Only this
# spelling verifies: the last character's two unused bits and a trailing "="
# would otherwise give one signature several, so a URL could be varied (around
# a cache or a filter keyed on it) while still verifying.
_SIG = re.compile(r"^[A-Za-z0-9_-]{43}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def signature(key: str, path: str) -> str:
    """The ``sig`` value for ``path`` (percent-decoded, query excluded)."""
    return _signature(key.encode("utf-8"), path.encode("utf-8")).decode("ascii")


def _signature(key: bytes, message: bytes) -> bytes:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def sign_url(key: str, url: str, max_size: int | None = None) -> str:
    """``url`` with its ``sig=`` (the CLI's ``avatarproxy sign``), replacing one it
    has: the service refuses a repeated ``sig``. With ``max_size``, a URL the
    service would refuse anyway (``check_avatar_request``) raises ``BadRequest``."""
    parts = urlsplit(url.replace("#", "%23"))  # a guest's #EXT# is not a fragment
    path = unquote(parts.path)
    kept = [p for p in parts.query.split("&") if p and p.partition("=")[0] != "sig"]
    if max_size is not None:
        check_avatar_request(path, "&".join(kept), max_size)
    query = "&".join([*kept, f"sig={signature(key, path)}"])
    path = quote(path, safe="/@'!^~$")
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@dataclass(frozen=True, slots=True)
class Policy:
    """The operator's security choices, normalised once at start-up."""

    signing_keys: tuple[bytes, ...] = field(repr=False)  # never in a repr or a log line
    allowed_domains: frozenset[str]
    allow_guests: bool
    blocked: BlockedPeople

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Policy:
        return cls(
            signing_keys=tuple(k.encode("utf-8") for k in settings.url_signing_keys if k),
            allowed_domains=frozenset(d.strip().lower().lstrip("@")
                                      for d in settings.allowed_domains if d.strip()),
            allow_guests=settings.allow_guests,
            blocked=BlockedPeople(settings.blocked),
        )

    def check_signature(self, path: str, sig: str | None) -> None:
        """Raise ``Forbidden`` unless signing is off or ``sig`` matches a key."""
        if not self.signing_keys:
            return
        if sig is None:
            raise Forbidden("signature required")
        if not _SIG.fullmatch(sig):
            raise Forbidden("bad signature")
        given = sig.encode("ascii")
        message = path.encode("utf-8")
        # The canonical spelling, compared as text. Every key is tried, whatever
        # matches, so timing says nothing about which.
        matches = [hmac.compare_digest(_signature(key, message), given)
                   for key in self.signing_keys]
        if not any(matches):
            raise Forbidden("bad signature")

    def check_subject(self, subject: Subject) -> None:
        """Raise ``NotFound`` for people outside the allowed domains, or guests if refused
        (for a contact: the owner of its mailbox)."""
        if subject.kind == "contact":
            return self.check_subject(Subject(subject.mailbox))
        if subject.is_object_id:
            return
        local, _, domain = subject.key.rpartition("@")
        # A guest's UPN is name_theirdomain#EXT#@tenant.onmicrosoft.com.
        if "#ext#" in local and not self.allow_guests:
            raise NotFound()
        if self.allowed_domains and domain not in self.allowed_domains:
            raise NotFound()

    def is_blocked(self, subject: Subject) -> bool:
        """Named, by this key, in ``security.blocked`` or among the names it resolved to."""
        return subject.key in self.blocked

    def withholds(self, subject: Subject) -> bool:
        """Whether the subject is blocked, or is any person while the list has not
        resolved yet: by another name (an object id for a UPN on the list, or the
        reverse) a blocked person cannot be recognised until then."""
        return self.is_blocked(subject) or (subject.kind == "user"
                                            and not self.blocked.resolved)

    def check_blocked(self, subject: Subject) -> None:
        """``Blocked`` if ``withholds``: transient unless the subject is on the list."""
        if self.withholds(subject):
            raise Blocked(transient=not self.is_blocked(subject))

    def refuses(self, subject: Subject) -> bool:
        """Whether serving would be refused: another domain, a guest, or blocked."""
        try:
            self.check_subject(subject)
        except NotFound:
            return True
        return self.is_blocked(subject)

    def check_person(self, person: Identity) -> None:
        """For the person an address resolved to: ``NotFound`` if their UPN's domain
        or guest status is refused, ``Blocked`` if any of their names is blocked."""
        try:
            self.check_subject(Subject(person.upn))
        except NotFound:
            raise RefusedPerson() from None
        if any(name in self.blocked for name in person.names):
            raise Blocked()

    def screens(self, subject: Subject) -> bool:
        """Whether ``subject`` is a user's object id whose UPN must be checked: some
        UPNs are refused (``allowed_domains``, ``allow_guests``)."""
        return ((bool(self.allowed_domains) or not self.allow_guests)
                and subject.kind == "user" and subject.is_object_id)

    def knows_owner(self, subject: Subject, meta: PhotoMeta) -> bool:
        """Whether ``meta`` says whose the object id is, when ``screens`` needs it
        (metadata cached without the rule, or by an older version, does not)."""
        if not self.screens(subject):
            return True
        if meta.profile is None:
            return not meta.has_photo  # Graph knows nobody by this id: nothing to show
        return meta.profile.upn is not None

    def check_owner(self, subject: Subject, meta: PhotoMeta | None) -> None:
        """For an object id, ``check_person`` on whose it is (by ``meta``): ``NotFound``
        also when Graph would name no UPN for an id with a photo."""
        if meta is None or meta.profile is None or not self.screens(subject):
            return
        if not meta.profile.upn:
            raise NotFound()
        self.check_person(Identity(subject.key, meta.profile.upn))

    def shows_owner(self, subject: Subject, meta: PhotoMeta) -> bool:
        """``check_owner`` as a yes or no, and no when ``meta`` cannot tell."""
        try:
            self.check_owner(subject, meta)
        except (NotFound, Blocked):
            return False
        return self.knows_owner(subject, meta)

    def check_address_lookup(self) -> None:
        """``Blocked`` (transient) while the blocked list is not resolved: the person
        an address leads to could be on it under another name."""
        if not self.blocked.resolved:
            raise Blocked(transient=True)


class ClientAddress:
    """The client's address, believing ``X-Forwarded-For`` only from trusted proxies.

    The header is read right to left: each hop appends the address it saw, so
    the first address that is not one of our proxies is the client.
    """

    def __init__(self, trusted: Sequence[str]) -> None:
        self._trusted = _networks(trusted)

    def of(self, remote: str | None, forwarded_for: Iterable[str]) -> str:
        address = _address(remote)
        if address is None:
            return remote or "unknown"
        if not self._is_trusted(address):
            return str(address)
        hops = [h.strip() for line in forwarded_for for h in line.split(",")]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                break  # a garbled chain: trust nothing further left
            address = hop_address
            if not self._is_trusted(address):
                break
        return str(address)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)


def _networks(items: Sequence[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            problems.append(f"server.trusted_proxies: not an address or network: {item!r}")
    if problems:
        raise ConfigError(problems)
    return tuple(networks)


def _address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
