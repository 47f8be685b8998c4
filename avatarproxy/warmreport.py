"""What ``avatarproxy warm`` counts and prints: every person lands in exactly one count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class _Pacer(Protocol):
    requests: int
    throttles: int


@dataclass
class WarmStats:
    seen: int = 0
    cached: int = 0  # already cached under the current mediaEtag: skipped
    photos: int = 0  # photos fetched and cached at every size
    initials: int = 0  # no photo: initials cached
    unknown: int = 0  # no such user, nor an address of one: a typo in a launch list
    failed: int = 0
    refused: int = 0  # the security policy refuses them: nothing fetched or cached
    failures: list[tuple[str, str]] = field(default_factory=list)  # (subject key, reason)
    unknown_keys: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return (self.cached + self.photos + self.initials + self.unknown + self.failed
                + self.refused)


def summary(stats: WarmStats, pacer: _Pacer, seconds: float) -> str:
    return (f"warm: {stats.seen} people: {stats.photos} photos cached, {stats.initials} "
            f"initials, {stats.cached} already cached, {stats.failed} failed, "
            f"{stats.unknown} unknown, {stats.refused} refused by the security policy; "
            f"{pacer.requests} Graph requests, {pacer.throttles} throttled, {seconds:.1f} s")


def progress_line(stats: WarmStats, total: int | None, width: int = 30) -> str:
    if total:
        filled = min(width, width * stats.done // max(total, 1))
        bar = "[" + "#" * filled + "." * (width - filled) + f"] {stats.done}/{total}"
    else:
        bar = f"{stats.done} done"
    return (f"{bar}  photos {stats.photos}, initials {stats.initials}, "
            f"cached {stats.cached}, failed {stats.failed}, unknown {stats.unknown}")
