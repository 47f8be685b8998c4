"""A Redis-tier hit in one round trip: the photo read together with its metadata.

A photo's key holds its mediaEtag (images are immutable, ``cache``), and the
mediaEtag is in the person's metadata: read one after the other, a hit in
Redis costs two round trips. So the photo key is guessed before the metadata
is read, from the mediaEtag this process last saw for the person
(``LastSeen``), and both are read at once (``AvatarCache.get_meta``). The
guess is used only with the metadata it was read with, and only for the very
key that metadata names: when another replica has refreshed the metadata to a
new mediaEtag, the keys differ and the right photo is read as before; a photo
of another version is never shown. Metadata that comes from anywhere else (Graph,
when Redis had none) leaves the guess unused: a purge may have landed while
Graph was asked, and the photo read before it must not outlive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import metrics
from .models import PhotoMeta, Subject

# People whose photo metadata a process keeps: a few MB at most, per worker.
KEPT = 8192


@dataclass(slots=True)
class ReadAhead:
    """A photo key guessed before its metadata was read, and what Redis held for it."""

    key: str
    body: bytes | None = None
    answered: bool = False  # Redis answered for ``key`` (``body`` None: it holds none)
    meta: PhotoMeta | None = None  # what ``get_meta`` found with it: the only one it serves

    def take(self) -> bytes | None:
        """``body``, used in place of a lookup of ``key``: counted as that lookup (only
        now: a guess that was wrong, or not used, is no lookup the service needed)."""
        metrics.cache_lookup("redis", "miss" if self.body is None else "hit")
        return self.body


class LastSeen:
    """cache id -> the metadata of the photo last seen; past ``kept``, the person
    seen least recently goes first."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._metas: dict[str, PhotoMeta] = {}  # in the order last seen, the oldest first

    def meta(self, subject: Subject) -> PhotoMeta | None:
        return self._metas.get(subject.cache_id)

    def saw(self, subject: Subject, meta: PhotoMeta) -> None:
        # Out, and in again as the newest: a dict keeps the order of insertion.
        self._metas.pop(subject.cache_id, None)
        if not meta.has_photo:
            return  # no photo: nothing to read ahead
        if len(self._metas) >= self._kept:
            del self._metas[next(iter(self._metas))]  # the least recently seen
        self._metas[subject.cache_id] = meta

    def forget(self, subject: Subject) -> None:
        self._metas.pop(subject.cache_id, None)
