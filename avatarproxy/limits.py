"""Load bounds of one process: a deadline per request, caps on requests in
flight and on queued image work. Past a cap the caller answers cheaply
(initials, ``no-store``) instead of queueing: a page would rather show
initials now than an avatar in thirty seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Overloaded
from .server import ServerSettings


class LoadLimits:
    def __init__(self, settings: ServerSettings) -> None:
        self.deadline = settings.request_deadline_seconds
        self._max_inflight = settings.max_inflight
        self._max_queued = settings.max_queued_images
        self.inflight = 0
        self.queued_images = 0
        self.rejected = 0  # requests answered cheaply because of a cap or the deadline

    @contextmanager
    def request(self) -> Iterator[None]:
        if self.inflight >= self._max_inflight:
            raise Overloaded("too many requests in flight")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    @contextmanager
    def image_job(self) -> Iterator[None]:
        if self.queued_images >= self._max_queued:
            raise Overloaded("too much image work queued")
        self.queued_images += 1
        try:
            yield
        finally:
            self.queued_images -= 1
