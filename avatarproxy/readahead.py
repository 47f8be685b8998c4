"""A Redis-tier hit in one round trip: the photo read together with its metadata.

A photo's key holds its mediaEtag (images are immutable, ``cache``), and the
mediaEtag is in the person's metadata: read one after the other, a hit in
Redis costs two round trips. So the photo key is guessed before the metadata
is read, from the mediaEtag this process last saw for the person
(``LastSeen``), and both are read at once (``AvatarCache.get_meta``). The
guess is used only for the very key the metadata then names: when another
replica has refreshed the metadata to a new mediaEtag, the keys differ and
the right photo is read as before; a photo of another version is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import PhotoMeta, Subject

# People whose mediaEtag a process keeps: ~2 MB at most, per worker.
KEPT = 8192


@dataclass(slots=True)
class ReadAhead:
    """A photo key guessed before its metadata was read, and what Redis held for it."""

    key: str
    body: bytes | None = None
    answered: bool = False  # Redis answered for ``key`` (``body`` None: it holds none)


class LastSeen:
    """cache id -> the mediaEtag of the photo last seen, oldest out first past ``kept``."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._etags: dict[str, str] = {}

    def media_etag(self, subject: Subject) -> str | None:
        return self._etags.get(subject.cache_id)

    def saw(self, subject: Subject, meta: PhotoMeta) -> None:
        if not meta.has_photo:
            self.forget(subject)
            return
        if subject.cache_id not in self._etags and len(self._etags) >= self._kept:
            del self._etags[next(iter(self._etags))]  # the oldest
        self._etags[subject.cache_id] = meta.media_etag

    def forget(self, subject: Subject) -> None:
        self._etags.pop(subject.cache_id, None)
