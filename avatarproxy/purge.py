"""Takedown across replicas: ``avatarproxy purge`` deletes a person's keys from
Redis, then announces the purge on a Redis channel; every running replica
listens and drops the person from its own memory tier, so no replica keeps
serving a copy until its metadata would have gone stale.

A replica that is disconnected when the announcement is sent misses it; its
copy then lives until ``cache.metadata_ttl_seconds`` (docs/operations.md says so).
So the outage is visible: ``avatarproxy_purge_subscribed`` (an alert after ten
minutes) and one log line when it starts, one when it ends.

The channel itself (its name, publishing, the subscription that survives
failovers and silent links) is ``redis.purgechannel``; this module is what a
purge does to the avatar cache.
"""

from __future__ import annotations

from aiohttp import web

from .cache import AvatarCache
from .errors import BadRequest
from .inputs import parse_contact, parse_subject
from .models import Subject
from .redis import connection
from .redis.purgechannel import OnPurge, PurgeListener, channel
from .redis.settings import RedisSettings


def listener(redis: RedisSettings, cache: AvatarCache) -> PurgeListener:
    """The subscription through which `avatarproxy purge` reaches ``cache``'s memory tier."""
    # connection.subscriber: the service's TLS and credentials, no read timeout.
    return PurgeListener(connection.subscriber(redis), channel(redis.key_prefix),
                         forgetter(cache), ping_seconds=redis.purge_ping_seconds)


# How a purge names an Outlook contact: its URL's path after /avatar/.
_CONTACT = "contact/"


def parse_target(text: str) -> Subject:
    """What ``avatarproxy purge`` takes down: a UPN or object id, or a contact as
    ``contact/<mailbox>/<contact id>`` (the mailbox written as its URLs write it);
    ``BadRequest`` otherwise."""
    if text.startswith(_CONTACT):
        mailbox, _, contact = text.removeprefix(_CONTACT).partition("/")
        return parse_contact(mailbox, contact)
    return parse_subject(text)


def target_text(subject: Subject) -> str:
    """``subject`` as ``parse_target`` reads it: what the purge channel carries."""
    if subject.kind == "contact":
        return f"{_CONTACT}{subject.mailbox}/{subject.key}"
    return subject.key


def forgetter(cache: AvatarCache) -> OnPurge:
    """Drop an announced person or contact from this process's memory (Redis is the
    announcer's)."""

    async def forget(text: str) -> bool:
        try:
            subject = parse_target(text)
        except BadRequest:
            return False  # not ours to act on
        await cache.purge(subject, shared=False)
        return True

    return forget


LISTENER: web.AppKey[PurgeListener] = web.AppKey("purge_listener", PurgeListener)
