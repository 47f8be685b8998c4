"""When not to call Graph: Retry-After pauses shared by replicas, and a circuit breaker.

Graph answers 429 (and some 503/504) with ``Retry-After`` in seconds, maybe
fractional, and ``x-ms-throttle-scope`` naming whose limit was hit: a
``Mailbox/...`` scope limits one person's mailbox, any other (tenant,
application) limits the whole app. A pause is kept in this process and in
Redis (a key with that TTL), so the other replicas hold off too; each reads
the others' pauses for a scope at most once per ``SHARED_RECHECK_SECONDS``
(a miss calls Graph twice, for the metadata and then the photo, and each read
is a round trip to Redis it waits for). Without a scope header, one person's
throttle pauses that person, and throttles of several people in a short time
pause every Graph call; but a contact's throttle pauses its mailbox only,
whoever else is throttled: pages of one mailbox's contacts meet Exchange's
limit of four calls at once per mailbox (``mailboxes``), which says nothing of
the app's.

Failures without Retry-After (timeouts, connection errors, 5xx) feed a
circuit breaker: after ``breaker_threshold`` in a row it opens and Graph is
not called for ``breaker_cooldown_seconds``; then one call probes it.
"""

from __future__ import annotations

import logging
import random
import time

from .. import logs
from ..errors import GraphUnavailable
from ..redis.coordination import ThrottlePauses
from .settings import GraphSettings

# Named as before the move into graph/: operators' log queries may use it.
log = logging.getLogger("avatarproxy.throttle")

APP_SCOPE = "app"
_SPREAD_WINDOW = 30.0  # seconds in which throttles of several people mean an app limit
_SPREAD_PEOPLE = 2
_BACKOFF_BASE = 0.1
_MAX_REMEMBERED = 1024
# How long a read of the other replicas' pauses holds: a pause another replica
# stores reaches this one's calls within this time (its own pauses at once).
SHARED_RECHECK_SECONDS = 1.0


def scope_of(mailbox: str, header: str | None) -> str:
    """Whose calls a throttle pauses: one mailbox, or the whole app."""
    if header is None or header.lower().startswith("mailbox"):
        return "mailbox:" + mailbox
    return APP_SCOPE


class GraphGate:
    def __init__(self, settings: GraphSettings, shared: ThrottlePauses | None = None) -> None:
        self._shared = shared  # the other replicas' pauses, in Redis
        self._threshold = settings.breaker_threshold
        self._cooldown = settings.breaker_cooldown_seconds
        self._paused: dict[str, float] = {}  # scope -> wall-clock end (shared with replicas)
        # scopes -> (monotonic time of the read, latest end the replicas had stored)
        self._shared_read: dict[tuple[str, ...], tuple[float, float]] = {}
        self._throttled_people: dict[str, float] = {}
        self._failures = 0
        self._open_until = 0.0
        self._probe_until = 0.0  # a probe is out until then
        self.throttles = 0  # Graph answers that carried Retry-After
        self.short_circuits = 0  # calls not made because of a pause or the breaker

    @property
    def breaker_open(self) -> bool:
        return self._failures >= self._threshold

    async def admit(self, mailbox: str) -> None:
        """Return if a Graph call for ``mailbox`` may go out now; else GraphUnavailable."""
        scopes = [APP_SCOPE, "mailbox:" + mailbox]
        wait = max(await self._pause_left(scopes), self._breaker_wait())
        if wait > 0:
            self.short_circuits += 1
            raise GraphUnavailable("Graph calls paused", retry_after=wait)

    async def failed(self, mailbox: str, exc: GraphUnavailable, attempt: int, *,
                     mailbox_only: bool = False) -> float:
        """Record a failed call; return how long to wait before a retry.

        ``mailbox_only``: a throttle without a scope header is this mailbox's alone,
        never counted towards the several people that mean an app-wide limit (a
        header naming the app is still believed).
        """
        if exc.retry_after is None:
            self._record_failure()
            # Full jitter: replicas retrying together must not stay in step.
            return random.uniform(0, _BACKOFF_BASE * 2 ** attempt)  # noqa: S311
        self.throttles += 1
        self._release_probe()
        for scope in self._scopes_to_pause(mailbox, exc.throttle_scope, mailbox_only):
            await self._pause(scope, exc.retry_after)
        return exc.retry_after + random.uniform(0, _BACKOFF_BASE)  # noqa: S311

    def succeeded(self) -> None:
        if self._failures >= self._threshold:
            log.warning("Graph answers again: circuit breaker closed")
        self._failures = 0
        self._probe_until = 0.0

    def _scopes_to_pause(self, mailbox: str, header: str | None,
                         mailbox_only: bool = False) -> list[str]:
        scope = scope_of(mailbox, header)
        if scope == APP_SCOPE or header is not None or mailbox_only:
            return [scope]
        now = time.monotonic()
        self._throttled_people = {m: t for m, t in self._throttled_people.items()
                                  if now - t < _SPREAD_WINDOW}
        self._throttled_people[mailbox] = now
        if len(self._throttled_people) >= _SPREAD_PEOPLE:
            return [scope, APP_SCOPE]
        return [scope]

    async def _pause(self, scope: str, seconds: float) -> None:
        until = time.time() + seconds
        if until <= self._paused.get(scope, 0.0):
            return
        self._paused[scope] = until
        if len(self._paused) > _MAX_REMEMBERED:  # a scan of many people stays bounded
            now = time.time()
            self._paused = {s: u for s, u in self._paused.items() if u > now}
        log.warning("Graph throttled %s: pausing its calls for %.3g s", _scope_ref(scope),
                    seconds)
        if self._shared is not None and seconds > 0:
            # Another replica may have stored a longer pause: the later end stays.
            await self._shared.keep_later(scope, until, seconds)

    async def _pause_left(self, scopes: list[str]) -> float:
        now = time.time()
        until = max(self._paused.get(scope, 0.0) for scope in scopes)
        if until <= now and self._shared is not None:
            until = max(until, await self._shared_pause(scopes))
        return max(0.0, until - now)

    async def _shared_pause(self, scopes: list[str]) -> float:
        """The latest end the replicas stored for ``scopes``, read again from Redis
        once the last read is ``SHARED_RECHECK_SECONDS`` old."""
        assert self._shared is not None
        key, now = tuple(scopes), time.monotonic()
        read = self._shared_read.get(key)
        if read is not None and now - read[0] < SHARED_RECHECK_SECONDS:
            return read[1]
        latest = await self._shared.latest(scopes)
        if len(self._shared_read) >= _MAX_REMEMBERED:  # a scan of many people stays bounded
            self._shared_read.clear()
        self._shared_read[key] = (now, latest)
        return latest

    def _record_failure(self) -> None:
        self._failures += 1
        self._release_probe()
        if self._failures >= self._threshold:
            if self._failures == self._threshold:
                log.warning("Graph keeps failing: circuit breaker open for %.3g s",
                            self._cooldown)
            self._open_until = time.monotonic() + self._cooldown

    def _release_probe(self) -> None:
        self._probe_until = 0.0

    def _breaker_wait(self) -> float:
        if self._failures < self._threshold:
            return 0.0
        now = time.monotonic()
        if now < self._open_until:
            return self._open_until - now
        if now < self._probe_until:
            return self._probe_until - now  # one probe at a time; the others fail fast
        self._probe_until = now + self._cooldown
        return 0.0


def _scope_ref(scope: str) -> str:
    """A scope as log lines name it: a mailbox is a person (``logging.log_upn``)."""
    kind, _, mailbox = scope.partition(":")
    return f"{kind}:{logs.subject_ref(mailbox)}" if kind == "mailbox" else scope
