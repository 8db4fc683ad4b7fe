"""The hot tier: each active (thread, namespace)'s latest checkpoint in one plain Redis hash.

Needs no Redis module (plain Redis >= 6, Valkey, managed services): only hashes, sets and
Lua. One hash per (thread, namespace) holds the latest checkpoint and its pending writes, so a
read is one round trip and the entry expires as a whole. Both keys of a thread share a hash
tag, hence one cluster slot. Values are the durable tier's bytes from the same serializer, so
encryption at rest covers Redis too.

Consistency is enforced inside Redis by the scripts, whoever sends the command and however
late it arrives:
- `floor`: the newest checkpoint id the entry has held; an older checkpoint is never installed
  (a delayed write from a frozen connection or a slower replica cannot roll the entry back).
- `gen`: a token replaced by every invalidation; a read-through warm only lands if the token
  is unchanged since its read (a warm racing a delete or a repair is dropped).
- Each entry lists the channels it needs, with their versions; an entry that does not add up
  reads as a miss.
- Changes are staged: a write travels to Redis alongside its Postgres write, marked pending
  under a token, and the entry reads as a miss until the token is committed (carried by the
  writer's next call), so Redis never serves what Postgres may not hold.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from threadline.checkpointers.durable import CheckpointRecord, PreparedCheckpoint, PreparedWrites

ABSENT_GEN = "0"
# A staged change whose commit never came (its writer died) stops blocking reads after this.
ABANDONED_SECONDS = 60

# Every script first applies the commits it carries (ARGV[n] = count, then the tokens).
_COMMITS = """
local function commit(k, at)
  local n = tonumber(ARGV[at])
  for i = at + 1, at + n do redis.call('HDEL', k, 'p:' .. ARGV[i]) end
  return at + n + 1
end
"""

_INSTALL = (
    _COMMITS
    + """
-- ARGV: ttl, ns, id, parent ('' = full), expected gen ('' = any), head, token, commits...,
--       then field/value pairs
local k = KEYS[1]
local first = commit(k, 8)
local id = ARGV[3]
local floor = redis.call('HGET', k, 'floor')
if floor and id < floor then return 0 end
if ARGV[5] ~= '' and ARGV[5] ~= (redis.call('HGET', k, 'gen') or '0') then return 0 end
local cur = redis.call('HGET', k, 'id')
local partial = ARGV[4] ~= ''
if partial and cur ~= ARGV[4] and cur ~= id then return -1 end
local stale = {}
for _, f in ipairs(redis.call('HKEYS', k)) do
  local p = string.sub(f, 1, 2)
  if ((p == 'w:' or p == 'p:') and cur ~= id) or (p == 'c:' and not partial) then
    stale[#stale + 1] = f
  end
end
if #stale > 0 then redis.call('HDEL', k, unpack(stale)) end
redis.call('HSET', k, 'id', id, 'floor', id, 'cp', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', k, 'p:' .. ARGV[7], id .. '|' .. redis.call('TIME')[1])
end
if #ARGV >= first then redis.call('HSET', k, unpack(ARGV, first)) end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""
)

_WRITES = (
    _COMMITS
    + """
-- ARGV: ttl, id, upsert, token, commits..., then field/value pairs
local k = KEYS[1]
local first = commit(k, 5)
if redis.call('HGET', k, 'id') ~= ARGV[2] then return 0 end
redis.call('HSET', k, 'p:' .. ARGV[4], ARGV[2] .. '|' .. redis.call('TIME')[1])
if #ARGV > first then
  if ARGV[3] == '1' then
    redis.call('HSET', k, unpack(ARGV, first))
  else
    for i = first, #ARGV, 2 do redis.call('HSETNX', k, ARGV[i], ARGV[i + 1]) end
  end
end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""
)

_READ = (
    _COMMITS
    + """
-- ARGV: ttl, abandoned after (s), commits...
-- Returns {state, fields}: state 0 = readable, 1 = staged change pending, 2 = only
-- abandoned staged changes.
local k = KEYS[1]
commit(k, 3)
local f = redis.call('HGETALL', k)
if #f == 0 then return {0, f} end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local state = 0
for i = 1, #f, 2 do
  if string.sub(f[i], 1, 2) == 'p:' then
    if state == 0 then state = 2 end
    local since = tonumber(string.match(f[i + 1], '|(%d+)$')) or 0
    if now - since < tonumber(ARGV[2]) then state = 1 end
  end
end
return {state, f}
"""
)

_COMMIT = (
    _COMMITS
    + """
commit(KEYS[1], 1)
return 1
"""
)

_INVALIDATE = """
-- ARGV: ttl, ns, below ('' = whatever the entry holds), reset floor ('1'), new gen
local k = KEYS[1]
local below = ARGV[3]
local cur = redis.call('HGET', k, 'id')
if below ~= '' and cur and cur > below then return 0 end
local floor = redis.call('HGET', k, 'floor')
if ARGV[4] == '1' then floor = false end
if below ~= '' and ((not floor) or below > floor) then floor = below end
redis.call('DEL', k)
redis.call('HSET', k, 'gen', ARGV[5])
if floor then redis.call('HSET', k, 'floor', floor) end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class HotRead:
    """What one read found: the entry's generation and, when it is readable, the checkpoint.

    `pending` means a change is staged in Redis whose Postgres write has not been confirmed:
    the entry must not be served (nor warmed over); `abandoned` means that change is so old
    its writer must be gone.
    """

    gen: str
    record: CheckpointRecord | None
    pending: bool = False
    abandoned: bool = False


def _pack(*items: Any) -> bytes:
    return ormsgpack.packb(items)


class HotTier:
    """Redis operations of the tiered saver; every call is one round trip."""

    def __init__(
        self,
        client: Redis,
        serde: SerializerProtocol,
        *,
        ttl_seconds: float = 3600,
        timeout_seconds: float = 0.1,
        prefix: str = "threadline",
    ) -> None:
        self.client = client
        self.timeout_seconds = timeout_seconds
        self.serde = serde
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.prefix = prefix
        self._install = client.register_script(_INSTALL)
        self._writes = client.register_script(_WRITES)
        self._read = client.register_script(_READ)
        self._commit = client.register_script(_COMMIT)
        self._invalidate = client.register_script(_INVALIDATE)

    @classmethod
    def from_url(
        cls,
        url: str,
        serde: SerializerProtocol,
        *,
        ttl_seconds: float = 3600,
        timeout_seconds: float = 0.1,
        prefix: str = "threadline",
    ) -> HotTier:
        """A client that never retries by itself.

        It has no socket timeouts of its own: `TieredSaver` bounds every call by
        `timeout_seconds` measured against its event loop's lag, since a socket timeout also
        fires when the loop, not Redis, is what runs late.
        """
        client = Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(
            client,
            serde,
            ttl_seconds=ttl_seconds,
            timeout_seconds=timeout_seconds,
            prefix=prefix,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def keys(self, thread_id: str, checkpoint_ns: str) -> tuple[str, str]:
        """(entry, namespace index) keys; the hash tag keeps a thread in one slot."""
        tag = thread_id if "{" not in thread_id and "}" not in thread_id else thread_id.encode()
        if isinstance(tag, bytes):
            tag = "x" + tag.hex()
        base = f"{self.prefix}:{{{tag}}}"
        return f"{base}:h:{checkpoint_ns}", f"{base}:ns"

    # ------------------------------------------------------------------ reads

    async def read(
        self, thread_id: str, checkpoint_ns: str, commits: Sequence[str] = ()
    ) -> HotRead:
        """The latest checkpoint if the entry holds a complete, committed one; refreshes the
        idle TTL and applies `commits` first, in the same round trip."""
        entry, index = self.keys(thread_id, checkpoint_ns)
        state, flat = await self._read(
            keys=[entry, index], args=[self.ttl_ms, ABANDONED_SECONDS, len(commits), *commits]
        )
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        gen = fields.get(b"gen", ABSENT_GEN.encode()).decode()
        if state:
            return HotRead(gen, None, pending=True, abandoned=state == 2)
        return HotRead(gen, self._decode(thread_id, checkpoint_ns, fields))

    async def commit(self, thread_id: str, checkpoint_ns: str, tokens: Sequence[str]) -> None:
        """Mark staged changes as durable, so the entry reads as a hit again."""
        entry, _ = self.keys(thread_id, checkpoint_ns)
        await self._commit(keys=[entry], args=[len(tokens), *tokens])

    def _decode(
        self, thread_id: str, checkpoint_ns: str, fields: dict[bytes, bytes]
    ) -> CheckpointRecord | None:
        checkpoint_id = fields.get(b"id")
        if checkpoint_id is None or b"cp" not in fields:
            return None
        skeleton, metadata, parent_id, blob_channels = self.serde.loads_typed(
            tuple(ormsgpack.unpackb(fields[b"cp"]))
        )
        if skeleton.get("id") != checkpoint_id.decode():
            return None
        versions = skeleton["channel_versions"]
        blobs: dict[str, tuple[str, bytes]] = {}
        for channel in blob_channels:
            packed = fields.get(b"c:" + channel.encode())
            if packed is None:
                return None
            version, type_tag, blob = ormsgpack.unpackb(packed)
            if version != str(versions.get(channel)):
                return None
            blobs[channel] = (type_tag, blob)
        writes = [
            tuple(ormsgpack.unpackb(value)) for key, value in fields.items() if key[:2] == b"w:"
        ]
        return CheckpointRecord(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=skeleton["id"],
            parent_id=parent_id,
            skeleton=skeleton,
            metadata=metadata,
            blobs=blobs,
            writes=writes,
        )

    # ----------------------------------------------------------------- writes

    def _head(self, skeleton: dict[str, Any], metadata: Any, parent: Any, channels: Any) -> bytes:
        return _pack(*self.serde.dumps_typed([skeleton, metadata, parent, channels]))

    async def put(
        self, prepared: PreparedCheckpoint, token: str = "", commits: Sequence[str] = ()
    ) -> bool:
        """Install a checkpoint, staged under `token` until its commit if one is given.

        Only its new channel values travel if Redis already holds its parent. False if Redis
        holds something newer.
        """
        changed = prepared.new_blobs()
        head = self._head(
            prepared.skeleton, prepared.metadata, prepared.parent_id, prepared.blob_channels
        )
        if prepared.parent_id:
            fields = [(ch, *value) for ch, value in changed.items()]
            # A value the checkpoint no longer holds (a delta channel past its snapshot) is
            # blanked, so the entry does not keep a stale full copy of it.
            values = prepared.checkpoint["channel_values"]
            fields += [
                (ch, str(v), "empty", b"")
                for ch, v in prepared.checkpoint["channel_versions"].items()
                if ch not in values
            ]
            done = await self._run_install(
                prepared, head, prepared.parent_id, token, commits, fields
            )
            if done >= 0:
                return done == 1
        values = prepared.checkpoint["channel_values"]
        versions = prepared.checkpoint["channel_versions"]
        full = []
        for channel in prepared.blob_channels:
            if channel in changed:
                full.append((channel, *changed[channel]))
            else:
                full.append(
                    (channel, str(versions[channel]), *self.serde.dumps_typed(values[channel]))
                )
        return await self._run_install(prepared, head, "", token, commits, full) == 1

    async def _run_install(
        self,
        prepared: PreparedCheckpoint,
        head: bytes,
        parent: str,
        token: str,
        commits: Sequence[str],
        channels: Sequence[tuple[str, str, str, bytes]],
    ) -> int:
        entry, index = self.keys(prepared.thread_id, prepared.checkpoint_ns)
        args: list[Any] = [
            self.ttl_ms,
            prepared.checkpoint_ns,
            prepared.checkpoint_id,
            parent,
            "",
            head,
            token,
            len(commits),
            *commits,
        ]
        for channel, version, type_tag, blob in channels:
            args += [b"c:" + channel.encode(), _pack(version, type_tag, blob)]
        return int(await self._install(keys=[entry, index], args=args))

    async def warm(self, record: CheckpointRecord, expected_gen: str) -> bool:
        """Install a checkpoint read from Postgres, unless the entry changed since `read`."""
        versions = record.skeleton["channel_versions"]
        head = self._head(record.skeleton, record.metadata, record.parent_id, list(record.blobs))
        entry, index = self.keys(record.thread_id, record.checkpoint_ns)
        args: list[Any] = [
            self.ttl_ms,
            record.checkpoint_ns,
            record.checkpoint_id,
            "",
            expected_gen,
            head,
            "",
            0,
        ]
        for channel, (type_tag, blob) in record.blobs.items():
            args += [b"c:" + channel.encode(), _pack(str(versions[channel]), type_tag, blob)]
        for task_id, channel, type_tag, blob, task_path, idx in record.writes:
            args += [
                f"w:{task_id}\0{idx}".encode(),
                _pack(task_id, channel, type_tag, blob, task_path, idx),
            ]
        return int(await self._install(keys=[entry, index], args=args)) == 1

    async def put_writes(
        self, prepared: PreparedWrites, token: str, commits: Sequence[str] = ()
    ) -> bool:
        """Stage pending writes under `token` if the entry holds their checkpoint."""
        entry, index = self.keys(prepared.thread_id, prepared.checkpoint_ns)
        args: list[Any] = [
            self.ttl_ms,
            prepared.checkpoint_id,
            "1" if prepared.upsert else "0",
            token,
            len(commits),
            *commits,
        ]
        for _, _, _, task_id, task_path, idx, channel, type_tag, blob in prepared.rows:
            args += [
                f"w:{task_id}\0{idx}".encode(),
                _pack(task_id, channel, type_tag, blob, task_path, idx),
            ]
        return int(await self._writes(keys=[entry, index], args=args)) == 1

    # ----------------------------------------------------------- invalidation

    async def invalidate(
        self,
        thread_id: str,
        checkpoint_ns: str,
        *,
        below: str | None = None,
        reset_floor: bool = False,
    ) -> None:
        """Drop the entry (if it holds `below` or older) and start a new generation.

        `below` also raises the floor, so a delayed write of an older checkpoint cannot land
        afterwards; `reset_floor` lets older checkpoints in again (after deleting newer ones).
        """
        entry, index = self.keys(thread_id, checkpoint_ns)
        await self._invalidate(
            keys=[entry, index],
            args=[
                self.ttl_ms,
                checkpoint_ns,
                below or "",
                "1" if reset_floor else "0",
                os.urandom(8).hex(),
            ],
        )

    async def invalidate_thread(self, thread_id: str, *, reset_floor: bool = False) -> None:
        """Invalidate every namespace of a thread (two round trips)."""
        _, index = self.keys(thread_id, "")
        members = await self.client.smembers(index)
        namespaces = {ns.decode() if isinstance(ns, bytes) else ns for ns in members}
        for ns in namespaces | {""}:
            await self.invalidate(thread_id, ns, reset_floor=reset_floor)
