"""The hash index: whose e-mail address an MD5 or SHA-256 hash is, and its options.

Tools that speak Gravatar (``gravatar``) send the hash of an address, never the
address, and a hash cannot be reversed: so the service keeps an index from the
MD5 and the SHA-256 of every user's addresses (``mail``, ``userPrincipalName``
and the ``smtp:`` entries of ``proxyAddresses``, trimmed and lower-cased, as
Gravatar hashes them) to the user's object id. ``indexsync`` keeps it current
with users delta query.

The index must not turn the service into a directory. It answers one hash at
a time (there is no way to list it), and it does not hold the hashes
themselves: each is stored as an HMAC under ``directory.index_key``, cut to 128
bits, so a copy of the store cannot be matched against a list of addresses
without the key. The key's fingerprint is stored with the index, so an index
made with another key is recognised rather than silently missed: in memory it
is rebuilt; in Redis each key has an index of its own (``RedisIndex``), so
replicas of two keys during a rotation do not rebuild each other's.

Two stores hold it: ``MemoryIndex`` (each process its own, and its own sync)
and ``redis.addressindex.RedisIndex`` (shared by the replicas, one syncer at a
time). Both answer ``IndexStore``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .options import option, settings

KEY_BYTES = 16  # HMAC-SHA256 cut to 128 bits: no collision among billions of addresses
MIN_INDEX_KEY_LENGTH = 16
_HEX = frozenset("0123456789abcdef")
_DIGEST_LENGTHS = (32, 64)  # MD5, SHA-256 in hex


@settings("directory")
class DirectorySettings:
    gravatar: bool = option(
        False,
        "Serve Gravatar and Libravatar URLs, /avatar/<MD5 or SHA-256 of an address>, from an "
        "index of every user's addresses kept by users delta query (needs User.Read.All).")
    index_key: str = option(
        "",
        "Secret the index stores each address hash under (an HMAC), so a copy of Redis cannot "
        "be matched against a list of addresses; required with gravatar, at least 16 "
        "characters. A new key builds a new index (in Redis beside the old one, dropped "
        "a day after its last round).", secret=True)
    sync_interval_seconds: int = option(
        300,
        "How often the index asks Graph what changed (one replica at a time with Redis).",
        minimum=1)


def settings_problems(gravatar: bool | None, index_key: str | None,
                      signing_keys: tuple[str, ...] | None) -> list[str]:
    """What stops ``directory.gravatar`` (``config`` asks; an invalid value is None)."""
    problems = []
    if index_key and len(index_key) < MIN_INDEX_KEY_LENGTH:
        problems.append(f"directory.index_key: at least {MIN_INDEX_KEY_LENGTH} characters "
                        "(openssl rand -base64 32)")
    if not gravatar:
        return problems
    if index_key == "":
        problems.append("directory.index_key: required when directory.gravatar is true: a "
                        "random secret (openssl rand -base64 32)")
    if signing_keys and any(signing_keys):
        # Tools cannot sign URLs, and an unsigned hash URL would show the photo of any
        # address to whoever can reach the service: what signing is set to prevent.
        problems.append("directory.gravatar: cannot be used with security.url_signing_keys: "
                        "tools cannot sign their avatar URLs; serve them from a deployment "
                        "without signing (docs/integrations.md)")
    return problems


def normalised(address: str) -> str:
    """An address as Gravatar hashes it: trimmed, lower case."""
    return address.strip().lower()


def digests(address: str) -> tuple[bytes, bytes]:
    """The MD5 and SHA-256 of ``address`` as Gravatar and Libravatar compute them."""
    data = normalised(address).encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).digest(), hashlib.sha256(data).digest()


def parse_digest(text: str) -> bytes | None:
    """The digest a 32- or 64-digit hex string spells (any case); None otherwise."""
    text = text.lower()
    if len(text) not in _DIGEST_LENGTHS or not set(text) <= _HEX:
        return None
    return bytes.fromhex(text)


class IndexKeys:
    """What the index stores a digest under: an HMAC with ``directory.index_key``."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode("utf-8")
        self.fingerprint = hmac.new(self._secret, b"avatarproxy index key",
                                    hashlib.sha256).hexdigest()[:16]

    def of_digest(self, digest: bytes) -> bytes:
        return hmac.digest(self._secret, digest, "sha256")[:KEY_BYTES]

    def of_addresses(self, addresses: Iterable[str]) -> frozenset[bytes]:
        """Both hashes of each address, as index keys."""
        return frozenset(self.of_digest(d) for address in addresses for d in digests(address))


@dataclass(frozen=True, slots=True)
class Entry:
    """A user's index keys as they are now; none: the user is gone."""

    object_id: str
    keys: frozenset[bytes]


def latest(entries: Sequence[Entry]) -> list[Entry]:
    """One entry a user, their last (a page may list a user twice; the last is how
    they are now), in the order users first appear."""
    return list({entry.object_id: entry for entry in entries}.values())


@dataclass(frozen=True, slots=True)
class SyncState:
    """Where the index stands: the delta link of its last complete round ("" before the
    first), the fingerprint of the key it was made with, when that round ended and
    when the last full round did (wall clock: replicas compare them)."""

    link: str
    key_id: str
    finished_at: float = 0.0
    full_at: float = 0.0

    def fresh(self, interval: float) -> bool:
        """Whether a round ended less than ``interval`` seconds ago."""
        return bool(self.link) and time.time() - self.finished_at < interval


class IndexUnavailable(Exception):
    """The store cannot answer now (Redis down): not the same as "nobody has it"."""


class IndexStore(Protocol):
    """Where the index lives. Every method but ``release`` may raise ``IndexUnavailable``.
    ``apply``: each user's keys become what their last entry says."""

    async def find(self, key: bytes) -> str | None: ...
    async def apply(self, entries: Sequence[Entry]) -> None: ...
    async def owners(self) -> set[str]: ...
    async def state(self) -> SyncState | None: ...
    async def save_state(self, state: SyncState) -> None: ...
    async def clear(self) -> None: ...
    # Indexes of other keys no round has kept for ``seconds``: deleted; how many.
    async def drop_abandoned(self, seconds: float) -> int: ...
    # The syncer's lease: who updates the index (the memory store: this process, always).
    async def claim(self, seconds: float) -> bool: ...
    async def renew(self, seconds: float) -> bool: ...
    async def release(self) -> None: ...


class MemoryIndex:
    """The index in this process: about 300 bytes per address (``docs/integrations.md``)."""

    def __init__(self) -> None:
        self._owner: dict[bytes, str] = {}  # index key -> object id
        # object id -> its index keys, concatenated (a bytes is a third of a frozenset's size)
        self._keys: dict[str, bytes] = {}
        self._state: SyncState | None = None

    def __len__(self) -> int:
        return len(self._owner)

    async def find(self, key: bytes) -> str | None:
        return self._owner.get(key)

    async def apply(self, entries: Sequence[Entry]) -> None:
        for entry in latest(entries):
            object_id = entry.object_id
            for key in split_keys(self._keys.pop(object_id, b"")) - entry.keys:
                # An address that moved to someone else is theirs now: only ours goes.
                if self._owner.get(key) == object_id:
                    del self._owner[key]
            if entry.keys:
                self._keys[object_id] = b"".join(sorted(entry.keys))
                self._owner.update(dict.fromkeys(entry.keys, object_id))

    async def owners(self) -> set[str]:
        return set(self._keys)

    async def state(self) -> SyncState | None:
        return self._state

    async def save_state(self, state: SyncState) -> None:
        self._state = state

    async def clear(self) -> None:
        self._owner.clear()
        self._keys.clear()
        self._state = None

    async def drop_abandoned(self, seconds: float) -> int:
        return 0  # one key a process: another key's index was cleared when it changed

    async def claim(self, seconds: float) -> bool:
        return True

    async def renew(self, seconds: float) -> bool:
        return True

    async def release(self) -> None:
        return None


def split_keys(joined: bytes) -> frozenset[bytes]:
    """Index keys stored one after another (what a user has, in both stores)."""
    return frozenset(joined[i:i + KEY_BYTES] for i in range(0, len(joined), KEY_BYTES))


class HashIndex:
    """Lookups: the object id a hex digest belongs to. ``ready``: a round has completed
    with this key, so a miss means nobody (before, it may mean "not yet")."""

    def __init__(self, store: IndexStore, keys: IndexKeys) -> None:
        self.store = store
        self.keys = keys
        self.ready = False

    async def lookup(self, digest: bytes) -> str | None:
        """Whose address hashes to ``digest``; ``IndexUnavailable`` if the store cannot say."""
        return await self.store.find(self.keys.of_digest(digest))
