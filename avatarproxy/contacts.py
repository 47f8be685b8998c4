"""Outlook contacts' photos: who may ask for them, and about which mailboxes.

``/avatar/contact/{mailbox}/{contact id}/{size}`` serves the photo a mailbox
keeps for one of its contacts (``/users/{mailbox}/contacts/{id}/photo``), with
the caching, formats, headers, initials and load caps of every other avatar.
A contact is personal data of the mailbox's owner, and the application
permission Graph asks for (``Contacts.Read``) reaches every mailbox of the
tenant. So the route is off unless ``graph.contacts`` is set; it answers only
for the mailboxes ``graph.contact_mailboxes`` lists (written in the URL as
listed: 404 for any other, without asking Graph), only on signed URLs (a
contact id is no secret: the service refuses to start without signing keys),
and only for mailboxes whose owner the domain and guest rules allow. The
operator scopes the permission to the same mailboxes in Exchange (RBAC for
Applications): README, "Outlook contacts".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import BadRequest, NotFound
from .inputs import parse_contact, parse_subject
from .models import Subject
from .options import option, settings


@settings("graph")
class ContactSettings:
    """The ``[graph]`` options of the contacts route (the rest: ``graph.settings``)."""

    contacts: bool = option(
        False,
        "Serve Outlook contacts' photos at /avatar/contact/<mailbox>/<contact id>/<size> "
        "(needs Contacts.Read scoped to graph.contact_mailboxes, and "
        "security.url_signing_keys).")
    contact_mailboxes: tuple[str, ...] = option(
        (),
        "Mailboxes (UPN or object id, as URLs write them) whose contacts may be served; "
        "any other is a 404 without a Graph call.")


_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class ContactRules:
    """Which mailboxes' contacts may be served: none unless the route is on."""

    mailboxes: frozenset[str]

    @classmethod
    def from_settings(cls, contacts: ContactSettings, signed: bool) -> ContactRules:
        """``signed``: signing keys are set; without them nothing is served, whatever
        the settings say (the loader refuses that configuration anyway)."""
        listed = (m.strip().lower() for m in contacts.contact_mailboxes if m.strip())
        return cls(frozenset(listed) if contacts.contacts and signed else frozenset())

    def contact(self, mailbox: str, contact_id: str) -> Subject:
        """The contact a request names; ``NotFound`` for a mailbox not listed (nor the
        route on), before anything else is looked at."""
        if mailbox.lower() not in self.mailboxes:
            raise NotFound()
        return parse_contact(mailbox, contact_id)


def sign_warnings(url: str, contacts: ContactSettings) -> list[str]:
    """Why a signed contact URL would still be a 404 here: the route off, or its mailbox
    not listed. ``avatarproxy sign`` signs it anyway (a page may be prepared before the
    service is configured) and says so."""
    segments = unquote(urlsplit(url.replace("#", "%23")).path).split("/")
    if len(segments) != 6 or segments[:3] != ["", "avatar", "contact"]:
        return []
    if not contacts.contacts:
        return ["graph.contacts is off: the service answers 404 to contact URLs"]
    try:
        ContactRules.from_settings(contacts, signed=True).contact(segments[3], segments[4])
    except NotFound:
        return [f"graph.contact_mailboxes does not list {segments[3]!r}: the service answers "
                "404 to its contacts' URLs"]
    except BadRequest:
        pass  # what is malformed, the sign command has already said
    return []


def problems(enabled: bool, mailboxes: Sequence[str], signed: bool,
             allowed_domains: Sequence[str], allow_guests: bool) -> list[str]:
    """Why ``graph.contacts`` cannot be on with these settings (none when it is off).

    The mailboxes' owners are held to the domain and guest rules here, once:
    with such rules a mailbox must be listed by UPN, whose domain tells.
    """
    if not enabled:
        return []
    found: list[str] = []
    if not signed:
        found.append("graph.contacts: needs security.url_signing_keys (a contact id is "
                     "not secret enough to guard personal data)")
    if not [m for m in mailboxes if m.strip()]:
        found.append("graph.contact_mailboxes: list the mailboxes whose contacts may be "
                     "served (graph.contacts is on)")
    domains = {d.strip().lower().lstrip("@") for d in allowed_domains if d.strip()}
    for mailbox in (m.strip().lower() for m in mailboxes if m.strip()):
        found += _mailbox_problems(mailbox, domains, allow_guests)
    return found


def _mailbox_problems(mailbox: str, domains: set[str], allow_guests: bool) -> list[str]:
    try:
        parse_subject(mailbox)
    except BadRequest:
        return [f"graph.contact_mailboxes: not a UPN or object id: {mailbox!r}"]
    if _GUID.fullmatch(mailbox):
        if domains or not allow_guests:
            return [f"graph.contact_mailboxes: {mailbox}: list the mailbox by UPN while "
                    "security.allowed_domains or allow_guests = false apply (its domain "
                    "is checked on the name)"]
        return []
    local, _, domain = mailbox.rpartition("@")
    if "#ext#" in local and not allow_guests:
        return [f"graph.contact_mailboxes: {mailbox}: a guest, and security.allow_guests "
                "is false"]
    if domains and domain not in domains:
        return [f"graph.contact_mailboxes: {mailbox}: not in security.allowed_domains"]
    return []
