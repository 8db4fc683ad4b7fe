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

import asyncio
import os
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import ormsgpack
from langgraph.checkpoint.base import DeltaChannelHistory, writes_sort_key
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from threadline.checkpointers.hot_protocol import (
    HISTORY_PREFIX,
    PARENT_FIELD,
    WRITE_PREFIX,
    ScriptCall,
    Scripts,
    decoded_delta_field,
    delta_prefix,
    history_field,
    install_call,
    invalidate_call,
    read_call,
    seed_field,
    since_field,
    staged_field,
    value_field,
    write_field,
    writes_call,
)
from threadline.checkpointers.places import (
    Place,
    blob_place,
    checkpoint_place,
    history_place,
    write_place,
)
from threadline.checkpointers.redis_clients import DEFAULT_POOL_SIZE, redis_client
from threadline.checkpointers.rows import (
    CheckpointRecord,
    PendingWrite,
    PreparedCheckpoint,
    PreparedWrites,
)
from threadline.checkpointers.serde import dumps_at, loads_at
from threadline.compat import DeltaSnapshot

ABSENT_GEN = "0"
# Channel values from this size on are stored compressed.
COMPRESS_FROM_BYTES = 16 * 1024
# A staged change whose commit never came (its writer died) stops blocking reads after this.
ABANDONED_SECONDS = 60


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
    histories: dict[str, HotHistory] = field(default_factory=dict)


T = TypeVar("T")


class Through(Protocol):
    """Runs one Redis call: the caller's deadline (`RedisGuard.call`), or nothing."""

    def __call__(self, call: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def _directly(call: Callable[[], Awaitable[T]], /) -> T:
    return await call()


@dataclass(frozen=True)
class HotHistory:
    """A delta channel's history at the entry's checkpoint, as Redis sent it.

    With `since` set it is only what follows the history of checkpoint `since`, which the
    reader said it holds; otherwise it is whole: `seed` (type, bytes) if any, then `writes`.
    Writes are (task_id, channel, type, blob), in replay order; `seed_place` and
    `write_places` say where each was stored (see `places`).
    """

    since: str | None
    seed: tuple[str, bytes] | None
    writes: list[tuple[str, str, str, bytes]]
    seed_place: Place = b""
    write_places: list[Place] = field(default_factory=list)


def _pack(*items: Any) -> bytes:
    return ormsgpack.packb(items)


def _pack_write(write: PendingWrite) -> bytes:
    return _pack(*write)


def _pack_value(version: str, type_tag: str, blob: bytes, *, snapshot: bool = False) -> bytes:
    """A channel value for the entry. A large delta-channel snapshot (a whole transcript, kept
    as the seed of its history while the thread is active) is compressed: Redis memory is the
    dearest tier, and snapshots are written once per many turns, unlike ordinary values."""
    if snapshot and len(blob) >= COMPRESS_FROM_BYTES:
        return _pack(version, type_tag, zlib.compress(blob, 1), "zlib")
    return _pack(version, type_tag, blob)


def _unpack_value(packed: bytes) -> tuple[str, str, bytes]:
    version, type_tag, blob, *encoding = ormsgpack.unpackb(packed)
    if encoding:
        blob = zlib.decompress(blob)
    return version, type_tag, blob


def history_channels(metadata: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Delta channels a checkpoint stores no value for: reading it replays their history."""
    counters = metadata.get("counters_since_delta_snapshot") or {}
    return [ch for ch in counters if ch not in values]


@dataclass
class _DeltaChannels:
    """What an install tells the script about delta channels, and history fields to set."""

    history: list[str]
    snapshots: list[str]
    parent: str | None  # the checkpoint's parent: late writes to it join its histories
    extra: list[tuple[bytes, Any]] = field(default_factory=list)

    def fields(self) -> list[tuple[bytes, Any]]:
        return [(PARENT_FIELD, self.parent or ""), *self.extra]


def _histories(
    thread_id: str, checkpoint_ns: str, fields: Mapping[bytes, bytes]
) -> dict[str, HotHistory]:
    """The delta histories an entry holds for its own checkpoint."""
    checkpoint_id = fields[b"id"]
    found: dict[str, HotHistory] = {}
    for key, value in fields.items():
        if not key.startswith(HISTORY_PREFIX) or value != checkpoint_id:
            continue
        name = key[2:]
        channel_name = name.decode()
        since = fields.get(since_field(name))
        seed = fields.get(seed_field(name)) if since is None else None
        prefix = delta_prefix(name)
        ordered = []
        for field_name, packed in fields.items():
            if field_name.startswith(prefix):
                task_id, channel, type_tag, blob, task_path, idx = ormsgpack.unpackb(packed)
                written_at = field_name[len(prefix) :].split(b"\0", 1)[0]
                if written_at:  # a stored write, copied from its checkpoint's entry
                    order: tuple[Any, ...] = writes_sort_key(task_path, task_id, idx)
                    at = write_place(
                        thread_id, checkpoint_ns, written_at.decode(), task_id, idx, channel
                    )
                else:  # decoded from Postgres when the entry was warmed
                    order = (idx,)
                    at = history_place(thread_id, checkpoint_ns, channel_name, idx)
                ordered.append(((written_at, order), (task_id, channel, type_tag, blob), at))
        ordered.sort(key=lambda item: item[0])
        seed_value = None if seed is None else _unpack_value(seed)
        found[channel_name] = HotHistory(
            since=None if since is None else since.decode(),
            seed=None if seed_value is None else seed_value[1:],
            writes=[write for _, write, _ in ordered],
            seed_place=_seed_place(thread_id, checkpoint_ns, channel_name, seed_value),
            write_places=[at for _, _, at in ordered],
        )
    return found


def _seed_place(
    thread_id: str, checkpoint_ns: str, channel: str, seed: tuple[str, str, bytes] | None
) -> Place:
    """A seed copied from a channel value names its version; one decoded from Postgres none."""
    if seed is None:
        return b""
    if seed[0]:
        return blob_place(thread_id, checkpoint_ns, channel, seed[0])
    return history_place(thread_id, checkpoint_ns, channel, -1)


class HotTier:
    """Redis operations of the tiered saver; every call is one round trip."""

    def __init__(
        self,
        client: Any,  # Redis or RedisCluster
        serde: SerializerProtocol,
        *,
        ttl_seconds: float = 3600,
        timeout_seconds: float = 0.1,
        prefix: str = "threadline",
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.client = client
        self.timeout_seconds = timeout_seconds
        self.pool_size = pool_size
        self.serde = serde
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.prefix = prefix
        self.scripts = Scripts(client)
        self.cluster = isinstance(client, RedisCluster)

    @classmethod
    def from_url(
        cls,
        url: str,
        serde: SerializerProtocol,
        *,
        ttl_seconds: float = 3600,
        timeout_seconds: float = 0.1,
        prefix: str = "threadline",
        cluster: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> HotTier:
        """A client that never retries by itself (on a cluster: only to follow the slot map).

        It has no socket timeouts of its own: `TieredSaver` bounds every call by
        `timeout_seconds` measured against its event loop's lag, since a socket timeout also
        fires when the loop, not Redis, is what runs late.
        """
        client = redis_client(
            url,
            cluster=cluster,
            pool_size=pool_size,
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
            pool_size=pool_size,
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
        self,
        thread_id: str,
        checkpoint_ns: str,
        commits: Sequence[str] = (),
        known: Mapping[str, str] | None = None,
    ) -> HotRead:
        """The latest checkpoint if the entry holds a complete, committed one, with the delta
        histories it holds; refreshes the idle TTL and applies `commits` first, in the same
        round trip. `known` maps a channel to a checkpoint whose history the caller holds."""
        call = read_call(
            self.keys(thread_id, checkpoint_ns),
            ttl_ms=self.ttl_ms,
            abandoned_seconds=ABANDONED_SECONDS,
            commits=commits,
            known=list((known or {}).items()),
        )
        state, flat = await self.scripts.run("read", call)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        gen = fields.get(b"gen", ABSENT_GEN.encode()).decode()
        if state:
            return HotRead(gen, None, pending=True, abandoned=state == 2)
        record = self._decode(thread_id, checkpoint_ns, fields)
        histories = _histories(thread_id, checkpoint_ns, fields) if record is not None else {}
        return HotRead(gen, record, histories=histories)

    async def commit(self, staged: Mapping[tuple[str, str], Sequence[str]]) -> None:
        """Mark staged changes of any number of entries durable, so they read as hits again:
        one round trip for all (a pipeline of `HDEL`s). On a cluster, one command per entry,
        all at once: the cluster client follows a slot that moved for each command, where a
        pipeline that meets one reloads the whole slot map (slower than a call's deadline)."""
        deletes = [
            (self.keys(thread_id, checkpoint_ns)[0], [staged_field(t) for t in tokens])
            for (thread_id, checkpoint_ns), tokens in staged.items()
        ]
        if self.cluster:
            await asyncio.gather(*(self.client.hdel(entry, *fields) for entry, fields in deletes))
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for entry, fields in deletes:
                pipe.hdel(entry, *fields)
            await pipe.execute()

    def _decode(
        self, thread_id: str, checkpoint_ns: str, fields: dict[bytes, bytes]
    ) -> CheckpointRecord | None:
        checkpoint_id = fields.get(b"id")
        if checkpoint_id is None or b"cp" not in fields:
            return None
        head = checkpoint_place("head", thread_id, checkpoint_ns, checkpoint_id.decode())
        skeleton, metadata, parent_id, blob_channels = loads_at(
            self.serde, tuple(ormsgpack.unpackb(fields[b"cp"])), head
        )
        if skeleton.get("id") != checkpoint_id.decode():
            return None
        versions = skeleton["channel_versions"]
        blobs: dict[str, tuple[str, bytes]] = {}
        for channel in blob_channels:
            packed = fields.get(value_field(channel))
            if packed is None:
                return None
            version, type_tag, blob = _unpack_value(packed)
            if version != str(versions.get(channel)):
                return None
            blobs[channel] = (type_tag, blob)
        writes = [
            PendingWrite(*ormsgpack.unpackb(value))
            for key, value in fields.items()
            if key.startswith(WRITE_PREFIX)
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

    def _head(
        self,
        thread: tuple[str, str],
        skeleton: dict[str, Any],
        metadata: Any,
        parent: Any,
        channels: Any,
    ) -> bytes:
        place = checkpoint_place("head", *thread, skeleton["id"])
        return _pack(*dumps_at(self.serde, [skeleton, metadata, parent, channels], place))

    async def put(
        self,
        prepared: PreparedCheckpoint,
        token: str = "",
        commits: Sequence[str] = (),
        *,
        through: Through = _directly,
    ) -> bool:
        """Install a checkpoint, staged under `token` until its commit if one is given
        (see `put_many`). False if Redis holds something newer."""
        return (await self.put_many([prepared], token, commits, through=through)) == [1]

    def partial_install(
        self, prepared: PreparedCheckpoint, token: str, commits: Sequence[str]
    ) -> ScriptCall | None:
        """The install of only a checkpoint's new values on top of its parent (None for a
        root checkpoint)."""
        if not prepared.parent_id:
            return None
        values = prepared.checkpoint["channel_values"]
        fields = [(ch, *value) for ch, value in prepared.new_blobs().items()]
        # A value the checkpoint no longer holds (a delta channel past its snapshot) is
        # blanked, so the entry does not keep a stale full copy of it.
        fields += [
            (ch, str(v), "empty", b"")
            for ch, v in prepared.checkpoint["channel_versions"].items()
            if ch not in values
        ]
        return self._install_call(prepared, prepared.parent_id, token, commits, fields)

    def full_install(
        self, prepared: PreparedCheckpoint, token: str, commits: Sequence[str]
    ) -> ScriptCall:
        """The install of a checkpoint with every value it holds."""
        changed = prepared.new_blobs()
        values = prepared.checkpoint["channel_values"]
        versions = prepared.checkpoint["channel_versions"]
        fields = []
        for channel in prepared.blob_channels:
            if channel in changed:
                fields.append((channel, *changed[channel]))
            else:
                version = str(versions[channel])
                place = blob_place(prepared.thread_id, prepared.checkpoint_ns, channel, version)
                fields.append((channel, version, *dumps_at(self.serde, values[channel], place)))
        return self._install_call(prepared, "", token, commits, fields)

    async def install(self, call: ScriptCall) -> int:
        """Run an install: 1 done, 0 Redis holds something newer, -1 it lacks the parent."""
        return int(await self.scripts.run("install", call))

    def _install_call(
        self,
        prepared: PreparedCheckpoint,
        parent: str,
        token: str,
        commits: Sequence[str],
        values: Sequence[tuple[str, str, str, bytes]],
    ) -> ScriptCall:
        head = self._head(
            (prepared.thread_id, prepared.checkpoint_ns),
            prepared.skeleton,
            prepared.metadata,
            prepared.parent_id,
            prepared.blob_channels,
        )
        channel_values = prepared.checkpoint["channel_values"]
        channels = _DeltaChannels(
            history=history_channels(prepared.metadata, channel_values),
            snapshots=[ch for ch, v in channel_values.items() if isinstance(v, DeltaSnapshot)],
            parent=prepared.parent_id,
        )
        if not prepared.parent_id:  # a root checkpoint: its histories are empty, and complete
            channels.extra += [
                (history_field(ch), prepared.checkpoint_id) for ch in channels.history
            ]
        fields = channels.fields()
        for channel, version, type_tag, blob in values:
            packed = _pack_value(version, type_tag, blob, snapshot=channel in channels.snapshots)
            fields.append((value_field(channel), packed))
        return install_call(
            self.keys(prepared.thread_id, prepared.checkpoint_ns),
            ttl_ms=self.ttl_ms,
            checkpoint_ns=prepared.checkpoint_ns,
            checkpoint_id=prepared.checkpoint_id,
            parent=parent,
            expected_gen="",
            head=head,
            token=token,
            commits=commits,
            history=channels.history,
            snapshots=channels.snapshots,
            fields=fields,
        )

    async def warm(
        self,
        record: CheckpointRecord,
        expected_gen: str,
        histories: Mapping[str, DeltaChannelHistory] | None = None,
        *,
        through: Through = _directly,
    ) -> bool:
        """Install a checkpoint read from Postgres, with the delta histories read for it,
        unless the entry changed since `read` (the Redis call runs `through`, as in `put`)."""
        call = self._warm_install(record, expected_gen, histories)
        return await through(lambda: self.install(call)) == 1

    def _warm_install(
        self,
        record: CheckpointRecord,
        expected_gen: str,
        histories: Mapping[str, DeltaChannelHistory] | None,
    ) -> ScriptCall:
        versions = record.skeleton["channel_versions"]
        thread = (record.thread_id, record.checkpoint_ns)
        head = self._head(
            thread, record.skeleton, record.metadata, record.parent_id, list(record.blobs)
        )
        inline = record.skeleton["channel_values"]
        channels = _DeltaChannels(
            history=[],
            snapshots=[ch for ch in record.blobs if inline.get(ch) is True],
            parent=record.parent_id,
        )
        for channel, history in (histories or {}).items():
            channels.extra += self._history_fields(thread, record.checkpoint_id, channel, history)
        fields = channels.fields()
        for channel, (type_tag, blob) in record.blobs.items():
            packed = _pack_value(
                str(versions[channel]), type_tag, blob, snapshot=channel in channels.snapshots
            )
            fields.append((value_field(channel), packed))
        for write in record.writes:
            fields.append(
                (write_field(write.task_id, write.idx, write.channel), _pack_write(write))
            )
        return install_call(
            self.keys(record.thread_id, record.checkpoint_ns),
            ttl_ms=self.ttl_ms,
            checkpoint_ns=record.checkpoint_ns,
            checkpoint_id=record.checkpoint_id,
            parent="",
            expected_gen=expected_gen,
            head=head,
            token="",
            commits=(),
            history=channels.history,
            snapshots=channels.snapshots,
            fields=fields,
        )

    def _history_fields(
        self,
        thread: tuple[str, str],
        checkpoint_id: str,
        channel: str,
        history: DeltaChannelHistory,
    ) -> list[tuple[bytes, Any]]:
        """A history decoded from Postgres, as entry fields (its writes carry no checkpoint
        ids, so they sort first and only a reader holding this very checkpoint skips them)."""
        name = channel.encode()
        fields: list[tuple[bytes, Any]] = [(history_field(name), checkpoint_id)]
        if "seed" in history:
            fields.append(
                (
                    seed_field(name),
                    _pack_value(
                        "",
                        *dumps_at(self.serde, history["seed"], history_place(*thread, channel, -1)),
                        snapshot=True,
                    ),
                )
            )
        for seq, (task_id, write_channel, value) in enumerate(history["writes"]):
            fields.append(
                (
                    decoded_delta_field(name, seq),
                    _pack(
                        task_id,
                        write_channel,
                        *dumps_at(self.serde, value, history_place(*thread, channel, seq)),
                        "",
                        seq,
                    ),
                )
            )
        return fields

    async def put_writes(
        self, prepared: PreparedWrites, token: str, commits: Sequence[str] = ()
    ) -> bool:
        """Stage pending writes under `token` if the entry holds their checkpoint."""
        return (await self.put_many([prepared], token, commits)) == [1]

    async def put_many(
        self,
        prepared: Sequence[PreparedCheckpoint | PreparedWrites],
        token: str,
        commits: Sequence[str] = (),
        *,
        through: Through = _directly,
    ) -> list[int]:
        """Stage checkpoints and writes of one entry, in order, under one `token`, in one
        round trip: a checkpoint sends only its new values when Redis holds its parent, and
        follows whole, in a second, when it does not. Each Redis call runs `through` (the
        caller's deadline), which times only the call: everything is serialised before it.
        Per item 1 if staged, 0 if Redis holds something newer."""
        calls: list[tuple[str, ScriptCall]] = []
        for position, one in enumerate(prepared):
            carried = commits if position == 0 else ()
            if isinstance(one, PreparedWrites):
                calls.append(("writes", self._writes_call(one, token, carried)))
            else:
                on_parent = self.partial_install(one, token, carried)
                calls.append(("install", on_parent or self.full_install(one, token, carried)))
        results: list[Any]
        if self.cluster:  # no scripts in a cluster pipeline: one call after another
            results = [await through(partial(self.scripts.run, *call)) for call in calls]
        else:
            results = await through(lambda: self.scripts.run_together(calls))
        done = [int(result) for result in results]
        for position, one in enumerate(prepared):
            if isinstance(one, PreparedCheckpoint) and done[position] < 0:
                whole = self.full_install(one, token, ())
                done[position] = int(await through(partial(self.scripts.run, "install", whole)))
        return done

    def _writes_call(
        self, prepared: PreparedWrites, token: str, commits: Sequence[str]
    ) -> ScriptCall:
        fields = [
            (
                write_field(r.task_id, r.idx, r.channel),
                _pack_write(PendingWrite(r.task_id, r.channel, r.type, r.blob, r.task_path, r.idx)),
            )
            for r in prepared.rows
        ]
        return writes_call(
            self.keys(prepared.thread_id, prepared.checkpoint_ns),
            ttl_ms=self.ttl_ms,
            checkpoint_id=prepared.checkpoint_id,
            upsert=prepared.upsert,
            token=token,
            commits=commits,
            fields=fields,
        )

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
        call = invalidate_call(
            self.keys(thread_id, checkpoint_ns),
            ttl_ms=self.ttl_ms,
            checkpoint_ns=checkpoint_ns,
            below=below,
            reset_floor=reset_floor,
            new_gen=os.urandom(8).hex(),
        )
        await self.scripts.run("invalidate", call)

    async def drop_all(self, batch: int = 500) -> int:
        """Delete every key of this deployment (after a key rotation: the hot tier is a cache,
        refilled from Postgres). Returns how many keys went."""
        dropped = 0
        pending: list[Any] = []
        async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=batch):
            pending.append(key)
            if len(pending) >= batch:
                dropped += await self.client.unlink(*pending)
                pending = []
        if pending:
            dropped += await self.client.unlink(*pending)
        return dropped

    async def invalidate_thread(self, thread_id: str, *, reset_floor: bool = False) -> None:
        """Invalidate every namespace of a thread (two round trips)."""
        _, index = self.keys(thread_id, "")
        members = await self.client.smembers(index)
        namespaces = {ns.decode() if isinstance(ns, bytes) else ns for ns in members}
        for ns in namespaces | {""}:
            await self.invalidate(thread_id, ns, reset_floor=reset_floor)
