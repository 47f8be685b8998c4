"""The hash index in the shared Redis: one copy for every replica, one syncer at a time.

What is stored (``hashindex`` says why the keys are HMACs), under a namespace of
the index key's fingerprint, ``<prefix>dir1:<fingerprint>:``, so that during a
rotation of ``directory.index_key`` replicas of the old and the new key each
keep an index of their own instead of rebuilding each other's every round:

- ``...x:<shard>``: hashes of index key (16 bytes) -> object id (16 bytes),
  spread over ``KEY_SHARDS`` by the key's first bytes. Small hashes stay in
  Redis's compact listpack encoding (up to 128 entries of 64 bytes by
  default): about 40 bytes an entry instead of ~100 as separate keys.
- ``...u:<shard>``: object id -> its index keys, concatenated: what to remove
  when a user's addresses change or the user is deleted.
- ``...{sync}``: the sync state (delta link, key fingerprint, when the last
  round and the last full round ended), and ``...{sync}:lease``, the syncer's
  lease. The ``{sync}`` hash tag puts both in one Cluster slot.
- ``<prefix>dir1:keys``: each fingerprint's last round, so the new key's
  syncer can drop an old key's index once no replica keeps it
  (``drop_abandoned``).

Every command touches one key; the writes of a page go in one non-transactional
pipeline, which redis-py splits by node in a Cluster. There are no TTLs: under
``maxmemory-policy allkeys-*`` Redis could evict index shards, so the docs ask
for ``volatile-lru`` (every avatar key has a TTL) when the index is on. A Redis
that does not answer, or refuses a command (an ACL without it, a full Redis),
is ``IndexUnavailable``, never "nobody" or "another replica syncs".
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..hashindex import Entry, IndexUnavailable, SyncState, latest, split_keys
from .link import RedisLink

KEY_SHARDS = 8192  # ~73 entries each for 300,000 addresses (two keys an address)
OWNER_SHARDS = 1024
_CHUNK = 512  # keys per pipeline when walking every shard
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # IndexKeys.fingerprint

# Delete an index key only if it still names this user: an address that moved to
# someone else in the meantime is theirs.
_DELETE_IF_OWNER = ("if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then "
                    "return redis.call('hdel', KEYS[1], ARGV[1]) end return 0")
_RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
            "return redis.call('del', KEYS[1]) else return 0 end")
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
          "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) return 1 else return 0 end")


class RedisIndex:
    """``hashindex.IndexStore`` over the process's one ``RedisLink``: the index of the
    key whose fingerprint is ``key_id``."""

    def __init__(self, link: RedisLink, key_prefix: str, key_id: str) -> None:
        self._link = link
        self._client = link.client
        self._prefix = key_prefix
        self._key_id = key_id
        self._namespace = f"{key_prefix}dir1:{key_id}:"
        self._state_key = f"{self._namespace}{{sync}}"
        self._lease_key = f"{self._state_key}:lease"
        self._registry = f"{key_prefix}dir1:keys"
        self._token = secrets.token_hex(16)  # this process's claim on the lease

    def key_shard(self, key: bytes) -> str:
        return f"{self._namespace}x:{int.from_bytes(key[:2], 'big') % KEY_SHARDS:04x}"

    def owner_shard(self, object_id: bytes) -> str:
        return f"{self._namespace}u:{int.from_bytes(object_id[-2:], 'big') % OWNER_SHARDS:03x}"

    async def find(self, key: bytes) -> str | None:
        value = await self._call("HGET", self._client.hget(self.key_shard(key), key))
        return str(uuid.UUID(bytes=value)) if isinstance(value, bytes) and len(value) == 16 \
            else None

    async def apply(self, entries: Sequence[Entry]) -> None:
        """Make each user's keys what ``entries`` says: two round trips a page."""
        # A user twice in a page would be diffed twice against what was stored before
        # it, and keys only the first entry added would stay theirs forever.
        entries = latest(entries)
        if not entries:
            return
        ids = [uuid.UUID(entry.object_id).bytes for entry in entries]
        read = self._client.pipeline(transaction=False)
        for object_id in ids:
            read.hget(self.owner_shard(object_id), object_id)
        before = await self._call("HGET", read.execute())
        write = self._client.pipeline(transaction=False)
        for entry, object_id, stored in zip(entries, ids, before, strict=True):
            had = split_keys(stored) if isinstance(stored, bytes) else frozenset()
            for key in had - entry.keys:
                write.eval(_DELETE_IF_OWNER, 1, self.key_shard(key), key, object_id)
            # Every key, not only new ones: one another user had taken comes back.
            for key in entry.keys:
                write.hset(self.key_shard(key), key, object_id)
            if entry.keys:
                write.hset(self.owner_shard(object_id), object_id, b"".join(sorted(entry.keys)))
            else:
                write.hdel(self.owner_shard(object_id), object_id)
        await self._call("HSET", write.execute())

    async def owners(self) -> set[str]:
        found: set[str] = set()
        for start in range(0, OWNER_SHARDS, _CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for shard in range(start, min(start + _CHUNK, OWNER_SHARDS)):
                pipe.hkeys(f"{self._namespace}u:{shard:03x}")
            for names in await self._call("HKEYS", pipe.execute()):
                found.update(str(uuid.UUID(bytes=n)) for n in names if len(n) == 16)
        return found

    async def state(self) -> SyncState | None:
        link, key_id, at, full = await self._call("HMGET", self._client.hmget(
            self._state_key, ["link", "key", "at", "full"]))
        if key_id is None:
            return None
        return SyncState(_text(link), _text(key_id), _number(at), _number(full))

    async def save_state(self, state: SyncState) -> None:
        await self._call("HSET", self._client.hset(self._state_key, mapping={
            "link": state.link, "key": state.key_id, "at": repr(state.finished_at),
            "full": repr(state.full_at)}))
        await self._call("HSET", self._client.hset(self._registry, self._key_id,
                                                   repr(state.finished_at)))

    async def clear(self) -> None:
        """Delete this key's whole index, shard by shard."""
        names = [f"{self._namespace}x:{s:04x}" for s in range(KEY_SHARDS)] + [
            f"{self._namespace}u:{s:03x}" for s in range(OWNER_SHARDS)] + [
            self._state_key, self._lease_key]
        for start in range(0, len(names), _CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for name in names[start:start + _CHUNK]:
                pipe.delete(name)  # one key a command: no cross-slot DEL in a Cluster
            await self._call("DEL", pipe.execute())
        await self._call("HDEL", self._client.hdel(self._registry, self._key_id))

    async def drop_abandoned(self, seconds: float) -> int:
        """Delete the indexes of other keys whose last round ended over ``seconds`` ago:
        a rotation is over, no replica keeps them. How many."""
        others = [key_id for name in await self._call("HKEYS", self._client.hkeys(
            self._registry)) if (key_id := _text(name)) != self._key_id]
        if not others:
            return 0
        ends = await self._call("HMGET", self._client.hmget(self._registry, others))
        before = time.time() - seconds
        abandoned = [key_id for key_id, end in zip(others, ends, strict=True)
                     if _number(end) < before and _FINGERPRINT.fullmatch(key_id)]
        for key_id in abandoned:
            await RedisIndex(self._link, self._prefix, key_id).clear()
        return len(abandoned)

    async def claim(self, seconds: float) -> bool:
        """Whether this process may sync now (nobody else holds the lease)."""
        return bool(await self._call("SET NX", self._client.set(
            self._lease_key, self._token, nx=True, px=_milliseconds(seconds))))

    async def renew(self, seconds: float) -> bool:
        """Keep the lease ``seconds`` more; False if it is no longer ours."""
        return bool(await self._call("EVAL", self._client.eval(
            _RENEW, 1, self._lease_key, self._token, _milliseconds(seconds))))

    async def release(self) -> None:
        with contextlib.suppress(IndexUnavailable):  # else it expires by itself
            await self._call("EVAL", self._client.eval(
                _RELEASE, 1, self._lease_key, self._token))

    async def _call(self, name: str, pending: Any) -> Any:
        """``pending``'s answer; ``IndexUnavailable`` when Redis gave none: down, or a
        command refused (``NOPERM`` from an ACL without it, ``READONLY``, ``OOM``)."""
        link = self._link
        sent = link.available  # else the link discards it unsent
        full = link.writes_refused_for_memory
        answer = await link.call(name, pending)
        if answer is not None:
            return answer
        if link.refused or link.writes_refused_for_memory != full:
            raise IndexUnavailable(f"redis refused {name}")
        if not (sent and link.healthy):
            raise IndexUnavailable("redis unavailable")
        return None


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else ""


def _number(value: object) -> float:
    try:
        return float(_text(value) or 0)
    except ValueError:
        return 0.0


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))
