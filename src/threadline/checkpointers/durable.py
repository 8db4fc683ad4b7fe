"""`DurablePostgresSaver`: the stock Postgres schema, without the stock saver's global lock.

The stock `AsyncPostgresSaver` serialises every operation of a saver behind one
`asyncio.Lock`, even on a pool, so concurrent threads queue up. This saver takes a pooled
connection per operation instead. Tables, migrations and row layout stay the stock ones
(threads written by either saver read back through the other), and it adds what the stock
one lacks: `adelete_for_runs`, `acopy_thread`, and encryption of the values the stock saver
keeps as plaintext JSONB (see `serde.ValueSealer`).

Serialisation is split from I/O (`prepare_*`, `write_*`, `fetch_record`) so the tiered saver
can hand the very same bytes to Redis.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import (
    PRUNE_BLOBS_SQL,
    PRUNE_REFERENCED_BLOBS_SQL,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from threadline.checkpointers.delta import (
    DEFAULT_HISTORY_CACHE_BYTES,
    FORGET_SEEDS_SQL,
    RETIRE_SEEDS_SQL,
    SEEDS_MIGRATION,
    STORE_TAIL_SQL,
    HistoryCache,
    PendingSnapshots,
    StoredSnapshots,
    delta_history,
    missing_tail,
    tail_task_id,
)
from threadline.checkpointers.loopbridge import LoopBoundSyncMethods
from threadline.checkpointers.places import (
    Place,
    blob_place,
    checkpoint_place,
    write_place,
)
from threadline.checkpointers.receipts import Receipt, live, receipts_in
from threadline.checkpointers.records import (
    INSERTED_RECORD_COLUMNS,
    RECORD_COLUMNS,
    RecordQuery,
    ThreadRecord,
    WrittenRecords,
    expired_sql,
    listing_sql,
    record_in,
    update_sql,
)
from threadline.checkpointers.rows import (
    BlobRow,
    CheckpointRecord,
    PendingWrite,
    PreparedCheckpoint,
    PreparedWrites,
    SaverCall,
    Statement,
    WriteRow,
    checkpoint_config,
)
from threadline.checkpointers.serde import (
    SEALED,
    UnencryptedDataError,
    ValueSealer,
    dumps_at,
    loads_at,
    metadata_matches,
    rebound,
    rebound_envelope,
)
from threadline.compat import DeltaSnapshot, cap_pool_retry_delays, garbage_blobs

logger = logging.getLogger(__name__)

# Sibling of `channel_values` in the checkpoint JSONB holding the sealed primitive values.
SEALED_VALUES = "$enc_values"
# The (thread, namespace) of a stock delta-history walk in progress, whose rows lack them.
_walked_thread: ContextVar[tuple[str, str]] = ContextVar("walked_thread")
POOL_KWARGS = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


SELECT_RUN_CHECKPOINTS_SQL = """
SELECT thread_id, checkpoint_ns, checkpoint_id, checkpoint -> 'channel_versions' AS versions
FROM checkpoints WHERE {column} = ANY(%s)
"""
DELETE_CHECKPOINTS_BY_KEY_SQL = """
DELETE FROM checkpoints c USING unnest(%s::text[], %s::text[], %s::text[]) AS d(t, ns, id)
WHERE c.thread_id = d.t AND c.checkpoint_ns = d.ns AND c.checkpoint_id = d.id
"""
DELETE_WRITES_BY_KEY_SQL = """
DELETE FROM checkpoint_writes w USING unnest(%s::text[], %s::text[], %s::text[]) AS d(t, ns, id)
WHERE w.thread_id = d.t AND w.checkpoint_ns = d.ns AND w.checkpoint_id = d.id
"""
DETACH_CHILDREN_SQL = """
UPDATE checkpoints c SET parent_checkpoint_id = NULL
FROM unnest(%s::text[], %s::text[], %s::text[]) AS d(t, ns, id)
WHERE c.thread_id = d.t AND c.checkpoint_ns = d.ns AND c.parent_checkpoint_id = d.id
"""
COPY_THREAD_SQL = (
    """INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
        type, checkpoint, metadata)
    SELECT %(dst)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
    FROM checkpoints WHERE thread_id = %(src)s ON CONFLICT DO NOTHING""",
    """INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(dst)s, checkpoint_ns, channel, version, type, blob
    FROM checkpoint_blobs WHERE thread_id = %(src)s ON CONFLICT DO NOTHING""",
    """INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path,
        idx, channel, type, blob)
    SELECT %(dst)s, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
    FROM checkpoint_writes WHERE thread_id = %(src)s ON CONFLICT DO NOTHING""",
)
# A thread's encrypted values, re-bound one by one (see `rebind_thread`).
SELECT_REBOUND_BLOBS_SQL = """
SELECT checkpoint_ns, channel, version, type, blob FROM checkpoint_blobs
WHERE thread_id = %s AND type LIKE '%%+%%'
"""
UPDATE_REBOUND_BLOB_SQL = """
UPDATE checkpoint_blobs SET type = %s, blob = %s
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = %s
"""
SELECT_REBOUND_WRITES_SQL = """
SELECT checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob FROM checkpoint_writes
WHERE thread_id = %s AND type LIKE '%%+%%'
"""
UPDATE_REBOUND_WRITE_SQL = """
UPDATE checkpoint_writes SET type = %s, blob = %s
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s AND task_id = %s AND idx = %s
"""
SELECT_REBOUND_CHECKPOINTS_SQL = f"""
SELECT checkpoint_ns, checkpoint_id, checkpoint -> '{SEALED_VALUES}' AS sealed, metadata
FROM checkpoints WHERE thread_id = %s
"""
UPDATE_REBOUND_CHECKPOINT_SQL = f"""
UPDATE checkpoints SET
    checkpoint = CASE WHEN %(sealed)s::jsonb IS NULL THEN checkpoint
        ELSE jsonb_set(checkpoint, '{{{SEALED_VALUES}}}', %(sealed)s::jsonb) END,
    metadata = %(metadata)s
WHERE thread_id = %(thread)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(id)s
"""
DELETE_THREAD_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = %s",
    "DELETE FROM checkpoint_blobs WHERE thread_id = %s",
    "DELETE FROM checkpoint_writes WHERE thread_id = %s",
    "DELETE FROM threadline_delta_seeds WHERE thread_id = %s",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = %s",
    "DELETE FROM threadline_threads WHERE thread_key = %s",
)
# threadline's own tables, one statement per entry (binary cursors take one command at a time).
MIGRATIONS = [
    statement
    for name in ("postgres_receipts.sql", "postgres_threads.sql")
    for statement in resources.files(__package__).joinpath(f"sql/{name}").read_text().split(";\n")
    if statement.strip()
]
# Written after PURGE_EXPIRED_RECEIPTS_SQL: a live receipt keeps its first checkpoint.
RECORD_RECEIPTS_SQL = """
INSERT INTO threadline_turn_receipts
    (thread_id, name, digest, checkpoint_ns, checkpoint_id, expires_at)
SELECT %s, u.name, u.digest, %s, %s, to_timestamp(%s)
FROM unnest(%s::text[], %s::text[]) AS u(name, digest)
ON CONFLICT (thread_id, name) DO NOTHING
"""
PURGE_EXPIRED_RECEIPTS_SQL = """
DELETE FROM threadline_turn_receipts WHERE thread_id = %s AND expires_at <= now()
"""
# A turn's record: owner, title, creation and metadata stay as the first turn left them.
UPSERT_RECORD_SQL = f"""
INSERT INTO threadline_threads ({INSERTED_RECORD_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (thread_key) DO UPDATE SET
    updated_at = EXCLUDED.updated_at, message_count = EXCLUDED.message_count
RETURNING {RECORD_COLUMNS}
"""
SELECT_RECORD_SQL = f"SELECT {RECORD_COLUMNS} FROM threadline_threads WHERE thread_key = %s"
EXPIRED_RECORDS_SQL = expired_sql("%s")
# Every checkpoint of a thread but one (which loses its parent), the writes and blobs only the
# others used, the thread's receipts and delta-snapshot markers; the record stays.
DELETE_CHECKPOINTS_SQL = (
    """DELETE FROM checkpoints WHERE thread_id = %(thread)s
        AND checkpoint_id IS DISTINCT FROM %(keep)s""",
    """DELETE FROM checkpoint_writes WHERE thread_id = %(thread)s
        AND checkpoint_id IS DISTINCT FROM %(keep)s""",
    """DELETE FROM checkpoint_blobs b WHERE b.thread_id = %(thread)s AND NOT EXISTS (
        SELECT 1 FROM checkpoints c, jsonb_each_text(c.checkpoint -> 'channel_versions') v
        WHERE c.thread_id = %(thread)s AND c.checkpoint_ns = b.checkpoint_ns
            AND v.key = b.channel AND v.value = b.version)""",
    "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = %(thread)s",
    "DELETE FROM threadline_delta_seeds WHERE thread_id = %(thread)s",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = %(thread)s",
)
SELECT_RECEIPT_SQL = """
SELECT name, digest, checkpoint_ns, checkpoint_id, extract(epoch FROM expires_at) AS expires_at
FROM threadline_turn_receipts WHERE thread_id = %s AND name = %s
"""


class CheckpointStoreUnavailable(RuntimeError):
    """Postgres could not be reached; the operation did not happen."""


def _record_statement(r: ThreadRecord) -> Statement:
    row = (r.thread_key, r.tenant, r.thread_id, r.user_id, r.title, r.created_at)
    return (UPSERT_RECORD_SQL, (*row, r.updated_at, r.message_count, Jsonb(r.metadata)))


def _receipt_statements(prepared: PreparedCheckpoint) -> list[Statement]:
    if not prepared.receipts:
        return []
    where = (prepared.thread_id, prepared.checkpoint_ns, prepared.checkpoint_id)
    expires_at = prepared.receipts[0].expires_at
    names = [r.name for r in prepared.receipts]
    digests = [r.digest for r in prepared.receipts]
    return [
        (PURGE_EXPIRED_RECEIPTS_SQL, (prepared.thread_id,)),
        (RECORD_RECEIPTS_SQL, (*where, expires_at, names, digests)),
    ]


class DurablePostgresSaver(LoopBoundSyncMethods, AsyncPostgresSaver):
    """Postgres saver on a connection pool: one pooled connection per operation, no lock."""

    conn: AsyncConnectionPool[AsyncConnection[DictRow]]

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[DictRow]],
        *,
        serde: SerializerProtocol | None = None,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
    ) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            raise TypeError("DurablePostgresSaver needs a psycopg AsyncConnectionPool")
        super().__init__(pool, serde=serde)
        self.sealer = ValueSealer(self.serde)
        self.delta_histories = HistoryCache(history_cache_bytes)
        self.pending_snapshots = PendingSnapshots()
        self.written_records = WrittenRecords()

    @classmethod
    @asynccontextmanager
    async def from_conn_string(  # type: ignore[override]
        cls,
        conn_string: str,
        *,
        pool_size: int = 10,
        pool_timeout_seconds: float = 10.0,
        serde: SerializerProtocol | None = None,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
        setup: bool = True,
    ) -> AsyncIterator[DurablePostgresSaver]:
        """A ready saver on its own pool, closed on exit."""
        async with open_pool(conn_string, pool_size, pool_timeout_seconds) as pool:
            saver = cls(pool, serde=serde, history_cache_bytes=history_cache_bytes)
            if setup:
                await saver.setup()
            yield saver

    async def setup(self) -> None:
        """The stock tables and migrations, then threadline's own tables."""
        await super().setup()
        async with self.cursor() as cur:
            await cur.execute(SEEDS_MIGRATION)
            for statement in MIGRATIONS:
                await cur.execute(statement)

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self.written_records.take(thread_key)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        async with self.cursor() as cur:
            await cur.execute(SELECT_RECORD_SQL, (thread_key,))
            row = await cur.fetchone()
        return ThreadRecord(**row) if row else None

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        sql, params = listing_sql("%s", query)
        async with self.cursor() as cur:
            await cur.execute(sql, params)
            return [ThreadRecord(**row) for row in await cur.fetchall()]

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        sql, params = update_sql(
            "%s", thread_key, changes, expect, lambda n, v: Jsonb(v) if n == "metadata" else v
        )
        async with self.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
        return ThreadRecord(**row) if row else None

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        async with self.cursor() as cur:
            await cur.execute(EXPIRED_RECORDS_SQL, (default_ttl, now, limit))
            return [ThreadRecord(**row) for row in await cur.fetchall()]

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        self.pending_snapshots.forget([thread_key])
        self.delta_histories.forget_thread(thread_key)
        async with self.cursor() as cur, cur.connection.transaction():
            for sql in DELETE_CHECKPOINTS_SQL:
                await cur.execute(sql, {"thread": thread_key, "keep": keep})

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        async with self.cursor() as cur:
            await cur.execute(SELECT_RECEIPT_SQL, (thread_id, name))
            row = await cur.fetchone()
        return live(Receipt(**{**row, "expires_at": float(row["expires_at"])})) if row else None

    @asynccontextmanager
    async def cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        """A cursor on a pooled connection (with `pipeline`, its statements form one
        transaction); an unreachable Postgres is `CheckpointStoreUnavailable`."""
        try:
            async with self.conn.connection() as conn:
                if pipeline:
                    # Statements up to the pipeline's one Sync form one implicit transaction.
                    async with (
                        conn.pipeline(),
                        conn.cursor(binary=True, row_factory=dict_row) as cur,
                    ):
                        yield cur
                else:
                    async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                        yield cur
        except (psycopg.OperationalError, PoolTimeout) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointStoreUnavailable(
                f"Postgres unavailable, nothing was stored or read ({type(exc).__name__}: {detail})"
            ) from exc

    _cursor = cursor  # the name the stock saver's inherited methods (setup, prune) call

    # ------------------------------------------------------------------ writes

    def prepare_put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> PreparedCheckpoint:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        parent_id = configurable.get("checkpoint_id")
        inline: dict[str, Any] = {}
        markers: dict[str, Any] = {}
        blob_values: dict[str, Any] = {}
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, DeltaSnapshot):
                blob_values[k] = v
                markers[k] = True
            elif v is None:
                inline[k] = v
            else:
                blob_values[k] = v
        skeleton = {**checkpoint, "channel_values": {**inline, **markers}}
        stored = {**checkpoint, "channel_values": {**inline, **markers}}
        if self.sealer.encrypted:
            stored["channel_values"] = markers
            if inline:
                stored[SEALED_VALUES] = self.sealer.seal(
                    inline, checkpoint_place("values", thread_id, checkpoint_ns, checkpoint["id"])
                )
        blob_versions: ChannelVersions = {
            k: str(v) for k, v in new_versions.items() if k in blob_values
        }
        md = dict(get_serializable_checkpoint_metadata(config, metadata))
        row = (
            thread_id,
            checkpoint_ns,
            checkpoint["id"],
            parent_id,
            Jsonb(stored),
            Jsonb(
                self.sealer.seal_metadata(
                    md, checkpoint_place("metadata", thread_id, checkpoint_ns, checkpoint["id"])
                )
            ),
        )
        return PreparedCheckpoint(
            thread_id=thread_id,
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint["id"],
            parent_id=parent_id,
            checkpoint=checkpoint,
            skeleton=skeleton,
            metadata=md,
            blob_channels=[k for k in blob_values if k in checkpoint["channel_versions"]],
            blob_rows=[
                BlobRow(*row)
                for row in self._dump_blobs(thread_id, checkpoint_ns, blob_values, blob_versions)
            ],
            row=row,
            receipts=receipts_in(md, checkpoint_ns, checkpoint["id"]),
            record=record_in(md),
        )

    def _dump_blobs(
        self,
        thread_id: str,
        checkpoint_ns: str,
        values: dict[str, Any],
        versions: ChannelVersions,
    ) -> list[tuple[str, str, str, str, str, bytes | None]]:
        """The stock rows, each value bound to its place (see `places`)."""
        return [
            (
                thread_id,
                checkpoint_ns,
                channel,
                str(version),
                *(
                    dumps_at(
                        self.serde,
                        values[channel],
                        blob_place(thread_id, checkpoint_ns, channel, str(version)),
                    )
                    if channel in values
                    else ("empty", None)
                ),
            )
            for channel, version in versions.items()
        ]

    def _dump_writes(
        self,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        task_id: str,
        task_path: str,
        writes: Sequence[tuple[str, Any]],
    ) -> list[tuple[str, str, str, str, str, int, str, str, bytes]]:
        """The stock rows, each value bound to its place (see `places`)."""
        rows = []
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            place = write_place(thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel)
            rows.append(
                (
                    thread_id,
                    checkpoint_ns,
                    checkpoint_id,
                    task_id,
                    task_path,
                    idx,
                    channel,
                    *dumps_at(self.serde, value, place),
                )
            )
        return rows

    async def write_prepared(
        self,
        prepared: Sequence[PreparedCheckpoint | PreparedWrites],
        also: Iterable[Statement] = (),
    ) -> None:
        """Store checkpoints and pending writes, in order, with the checkpoints' receipts and
        thread records (and `also` statements), in one transaction: one round trip. The last
        record as stored is kept for `take_written_record`."""
        records = [
            p.record for p in prepared if isinstance(p, PreparedCheckpoint) and p.record is not None
        ]
        async with self.cursor(pipeline=True) as cur:
            for one in prepared:
                if isinstance(one, PreparedWrites):
                    if one.rows:
                        sql = (
                            self.UPSERT_CHECKPOINT_WRITES_SQL
                            if one.upsert
                            else self.INSERT_CHECKPOINT_WRITES_SQL
                        )
                        await cur.executemany(sql, one.rows)
                    continue
                if one.blob_rows:
                    await cur.executemany(self.UPSERT_CHECKPOINT_BLOBS_SQL, one.blob_rows)
                await cur.execute(self.UPSERT_CHECKPOINTS_SQL, one.row)
                for sql, params in _receipt_statements(one):
                    await cur.execute(sql, params)
            for sql, params in also:
                await cur.execute(sql, params)
            for record in records:  # last: the last one's RETURNING row ends the pipeline
                await cur.execute(*_record_statement(record))
            if records and (row := await cur.fetchone()):
                self.written_records.put(ThreadRecord(**row))

    async def aput_many(self, calls: Sequence[SaverCall]) -> None:
        """A turn's puts and writes, in the order LangGraph made them, stored all or nothing in
        one transaction (one round trip instead of one per call)."""
        prepared = [self.prepare_call(call) for call in calls]
        await self.write_prepared(prepared)
        for one in prepared:
            if isinstance(one, PreparedCheckpoint):
                await self.settle_snapshots(one)

    def prepare_call(self, call: SaverCall) -> PreparedCheckpoint | PreparedWrites:
        method, args = call
        if method == "aput":
            return self.prepare_put(*args)
        if method == "aput_writes":
            return self.prepare_writes(*args)
        raise ValueError(f"not a saver write: {method}")

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        prepared = self.prepare_put(config, checkpoint, metadata, new_versions)
        await self.write_prepared([prepared])
        await self.settle_snapshots(prepared)
        return prepared.next_config

    async def settle_snapshots(self, prepared: PreparedCheckpoint) -> None:
        """After a put: check the thread's previous snapshots, now that everything that led
        to them is stored; record the derived ones and retire the channel's older derived
        snapshots (see `delta`). Best effort: a snapshot left unrecorded is merely kept."""
        snapshots = prepared.snapshots()
        stored = (
            StoredSnapshots(
                prepared.thread_id,
                prepared.checkpoint_ns,
                prepared.checkpoint_id,
                prepared.parent_id,
                snapshots,
            )
            if snapshots
            else None
        )
        earlier = self.pending_snapshots.swap((prepared.thread_id, prepared.checkpoint_ns), stored)
        if earlier is None or earlier.checkpoint_id == prepared.checkpoint_id:
            return
        try:
            await self._record_derived(earlier)
        except (psycopg.Error, CheckpointStoreUnavailable) as exc:
            logger.warning("kept older delta snapshots (%s)", type(exc).__name__)

    async def _record_derived(self, snapshots: StoredSnapshots) -> None:
        thread_id, ns, checkpoint_id = (
            snapshots.thread_id,
            snapshots.checkpoint_ns,
            snapshots.checkpoint_id,
        )

        async def no_walk(channels: Sequence[str]) -> Mapping[str, DeltaChannelHistory]:
            return {}  # a snapshot whose history would need a full walk is simply kept

        histories = await delta_history(
            self.delta_histories,
            self.cursor,
            self.load_write,
            no_walk,
            (thread_id, ns, checkpoint_id),
            list(snapshots.values),
        )
        if not histories:
            return
        async with self.cursor() as cur, cur.connection.transaction():
            for channel, (version, value) in snapshots.values.items():
                if channel not in histories:
                    continue
                tail = missing_tail(value, histories[channel])
                if tail is None:
                    continue
                if tail and not await self._store_tail(cur, snapshots, channel, tail):
                    continue
                self.delta_histories.discard((thread_id, ns, checkpoint_id, channel))
                params = {"thread": thread_id, "ns": ns, "channel": channel}
                await cur.execute(
                    RETIRE_SEEDS_SQL, {**params, "id": checkpoint_id, "version": version}
                )

    async def _store_tail(
        self,
        cur: AsyncCursor[DictRow],
        snapshots: StoredSnapshots,
        channel: str,
        tail: list[Any],
    ) -> bool:
        """Store a snapshot's unstored messages as a write on its parent, if that is stored
        and has no other child (see `STORE_TAIL_SQL`)."""
        if snapshots.parent_id is None:
            return False
        key = (snapshots.thread_id, snapshots.checkpoint_ns, snapshots.parent_id)
        (row,) = self._dump_writes(
            *key, tail_task_id(snapshots.checkpoint_id), "", [(channel, tail)]
        )
        names = ("thread", "ns", "parent", "task", "path", "idx", "channel", "type", "blob")
        params = {**dict(zip(names, row, strict=True)), "child": snapshots.checkpoint_id}
        await cur.execute(STORE_TAIL_SQL, params)
        return await cur.fetchone() is not None

    def prepare_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> PreparedWrites:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = configurable["checkpoint_id"]
        rows = [
            WriteRow(*row)
            for row in self._dump_writes(
                thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, writes
            )
        ]
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        return PreparedWrites(thread_id, checkpoint_ns, checkpoint_id, rows, upsert)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self.write_prepared([self.prepare_writes(config, writes, task_id, task_path)])

    # ------------------------------------------------------------------- reads

    async def fetch_record(
        self, thread_id: str, checkpoint_ns: str, checkpoint_id: str | None
    ) -> CheckpointRecord | None:
        """The given checkpoint, or the latest of the namespace when `checkpoint_id` is None."""
        if checkpoint_id:
            where = "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
            args: tuple[Any, ...] = (thread_id, checkpoint_ns, checkpoint_id)
        else:
            where = (
                "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"
            )
            args = (thread_id, checkpoint_ns)
        async with self.cursor() as cur:
            await cur.execute(self.SELECT_SQL + where, args, binary=True)
            row = await cur.fetchone()
            if row is None:
                return None
            await self._migrate_sends(cur, [row])
        return self._record(row)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        record = await self.fetch_record(
            str(configurable["thread_id"]),
            configurable.get("checkpoint_ns", ""),
            get_checkpoint_id(config),
        )
        return None if record is None else self.to_tuple(record)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        configurable = config["configurable"]
        thread = (str(configurable["thread_id"]), configurable.get("checkpoint_ns", ""))

        async def full_history(walk: Sequence[str]) -> Mapping[str, DeltaChannelHistory]:
            token = _walked_thread.set(thread)
            try:
                return await super(DurablePostgresSaver, self).aget_delta_channel_history(
                    config=config, channels=walk
                )
            finally:
                _walked_thread.reset(token)

        checkpoint_id = get_checkpoint_id(config)
        if not channels or not checkpoint_id:
            return await full_history(channels)
        return await delta_history(
            self.delta_histories,
            self.cursor,
            self.load_write,
            full_history,
            (*thread, checkpoint_id),
            channels,
        )

    def load_write(
        self,
        typed: tuple[str, bytes],
        thread: tuple[str, str],
        checkpoint_id: str,
        task_id: str,
        idx: int,
        channel: str,
    ) -> Any:
        """A stored pending write, read from its place."""
        place = write_place(*thread, checkpoint_id, task_id, idx, channel)
        return loads_at(self.serde, typed, place)

    def _build_delta_channels_writes_history(
        self,
        *,
        channels: Sequence[str],
        chain_by_ch: Mapping[str, list[str]],
        seed_ver_by_ch: Mapping[str, str | None],
        seed_inline_by_ch: Mapping[str, Any],
        stage2_rows: Sequence[Any],
    ) -> dict[str, DeltaChannelHistory]:
        """The stock full walk's decoding, reading each row from its place (the walk's thread
        is set by `aget_delta_channel_history`: the stock rows do not carry it)."""
        thread = _walked_thread.get()
        writes: dict[tuple[str, str], list[Any]] = defaultdict(list)
        seeds: dict[tuple[str, str], tuple[str, bytes]] = {}
        for r in stage2_rows:
            if r["_kind"] == "w":
                writes[(r["channel"], r["checkpoint_id"])].append(r)
            else:
                seeds[(r["channel"], r["version"])] = (r["type"], r["blob"])
        result: dict[str, DeltaChannelHistory] = {}
        for ch in channels:
            collected: list[tuple[str, str, Any]] = []
            for cid in chain_by_ch.get(ch, []):
                rows = sorted(
                    writes.get((ch, cid), []),
                    key=lambda w: writes_sort_key(w["task_path"], w["task_id"], w["idx"]),
                    reverse=True,
                )
                collected.extend(
                    (
                        w["task_id"],
                        ch,
                        self.load_write(
                            (w["type"], w["blob"]), thread, cid, w["task_id"], w["idx"], ch
                        ),
                    )
                    for w in rows
                )
            collected.reverse()
            entry: DeltaChannelHistory = {"writes": collected}
            if (version := seed_ver_by_ch.get(ch)) is not None:
                seed = seeds.get((ch, version))
                if seed is not None and seed[0] != "empty":
                    entry["seed"] = loads_at(self.serde, seed, blob_place(*thread, ch, version))
                elif ch in seed_inline_by_ch:
                    entry["seed"] = seed_inline_by_ch[ch]
            result[ch] = entry
        return result

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        indexed, residual = self.sealer.split_filter(filter or {})
        where, args = self._search_where(config, indexed or None, before)
        query = self.SELECT_SQL + where + " ORDER BY checkpoint_id DESC"
        params = list(args)
        if limit is not None and not residual:
            query += " LIMIT %s"
            params.append(int(limit))
        async with self.cursor() as cur:
            await cur.execute(query, params, binary=True)
            rows = await cur.fetchall()
            await self._migrate_sends(cur, rows)
        emitted = 0
        for row in rows:
            record = self._record(row)
            if residual and not metadata_matches(record.metadata, residual):
                continue
            yield self.to_tuple(record)
            emitted += 1
            if limit is not None and emitted >= limit:
                return

    async def _migrate_sends(self, cur: AsyncCursor[DictRow], rows: list[DictRow]) -> None:
        """Fold pre-v4 pending sends into their checkpoint, as the stock saver does."""
        to_migrate = [r for r in rows if r["checkpoint"]["v"] < 4 and r["parent_checkpoint_id"]]
        if not to_migrate:
            return
        by_parent: dict[str, list[DictRow]] = defaultdict(list)
        for r in to_migrate:
            by_parent[r["parent_checkpoint_id"]].append(r)
        await cur.execute(self.SELECT_PENDING_SENDS_SQL, (rows[0]["thread_id"], list(by_parent)))
        for sends in await cur.fetchall():
            for r in by_parent[sends["checkpoint_id"]]:
                if r["channel_values"] is None:
                    r["channel_values"] = []
                self._migrate_pending_sends(sends["sends"], r["checkpoint"], r["channel_values"])

    def _record(self, row: DictRow) -> CheckpointRecord:
        skeleton = dict(row["checkpoint"])
        inline = dict(skeleton.get("channel_values") or {})
        blobs = {
            ch.decode(): (t.decode(), blob)
            for ch, t, blob in row["channel_values"] or ()
            if t != b"empty"
        }
        sealed = skeleton.pop(SEALED_VALUES, None)
        where = (row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])
        if self.sealer.encrypted:
            if plaintext := [k for k in inline if k not in blobs]:
                raise UnencryptedDataError(
                    f"refusing unencrypted channel values {plaintext} while THREADLINE_AES_KEY "
                    "is set"
                )
            if sealed is not None:
                inline.update(self.sealer.unseal(sealed, checkpoint_place("values", *where)))
        elif sealed is not None:
            raise UnencryptedDataError(
                "this checkpoint is encrypted; set THREADLINE_AES_KEY to read it"
            )
        skeleton["channel_values"] = inline
        writes = [
            PendingWrite(tid.decode(), ch.decode(), t.decode(), blob, path.decode(), int(idx))
            for tid, ch, t, blob, path, idx in row["pending_writes"] or ()
        ]
        return CheckpointRecord(
            thread_id=row["thread_id"],
            checkpoint_ns=row["checkpoint_ns"],
            checkpoint_id=row["checkpoint_id"],
            parent_id=row["parent_checkpoint_id"],
            skeleton=skeleton,
            metadata=self.sealer.open_metadata(
                row["metadata"], checkpoint_place("metadata", *where)
            ),
            blobs=blobs,
            writes=writes,
        )

    def to_tuple(self, record: CheckpointRecord) -> CheckpointTuple:
        thread = (record.thread_id, record.checkpoint_ns)
        versions = record.skeleton["channel_versions"]
        values = {
            **record.skeleton["channel_values"],
            **{
                ch: loads_at(self.serde, typed, blob_place(*thread, ch, str(versions[ch])))
                for ch, typed in record.blobs.items()
            },
        }
        writes = sorted(record.writes, key=_write_order)
        return CheckpointTuple(
            config=checkpoint_config(record.thread_id, record.checkpoint_ns, record.checkpoint_id),
            checkpoint={**record.skeleton, "channel_values": values},  # type: ignore[typeddict-item]
            metadata=record.metadata,  # type: ignore[arg-type]
            parent_config=(
                checkpoint_config(record.thread_id, record.checkpoint_ns, record.parent_id)
                if record.parent_id
                else None
            ),
            pending_writes=[
                (
                    w.task_id,
                    w.channel,
                    self.load_write(
                        (w.type, w.blob), thread, record.checkpoint_id, w.task_id, w.idx, w.channel
                    ),
                )
                for w in writes
            ],
        )

    # --------------------------------------------------------------- deletion

    async def adelete_thread(self, thread_id: str) -> None:
        self.pending_snapshots.forget([str(thread_id)])
        self.delta_histories.forget_thread(str(thread_id))
        async with self.cursor(pipeline=True) as cur:
            for sql in DELETE_THREAD_SQL:
                await cur.execute(sql, (str(thread_id),))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.pending_snapshots.forget([str(t) for t in thread_ids])
        await super().aprune(thread_ids, strategy=strategy)
        async with self.cursor() as cur:
            await cur.execute(FORGET_SEEDS_SQL, ([str(t) for t in thread_ids],))

    async def delete_runs(self, run_ids: Sequence[str]) -> set[tuple[str, str]]:
        """Delete the checkpoints (and their writes and orphaned blobs) of these runs.

        Returns the (thread, namespace) pairs that lost checkpoints.
        """
        run_ids = [str(r) for r in run_ids]
        if not run_ids:
            return set()
        keys = self.sealer.run_id_keys(run_ids)
        async with self.cursor() as cur, cur.connection.transaction():
            if keys is None:
                doomed = await self._scan_runs(cur, set(run_ids))
            else:
                column = (
                    "metadata -> '$idx' ->> 'run_id'"
                    if self.sealer.encrypted
                    else "metadata ->> 'run_id'"
                )
                await cur.execute(
                    SELECT_RUN_CHECKPOINTS_SQL.format(column=column) + " FOR UPDATE",
                    (keys,),
                )
                doomed = await cur.fetchall()
            if not doomed:
                return set()
            columns = (
                [d["thread_id"] for d in doomed],
                [d["checkpoint_ns"] for d in doomed],
                [d["checkpoint_id"] for d in doomed],
            )
            for sql in (DELETE_CHECKPOINTS_BY_KEY_SQL, DELETE_WRITES_BY_KEY_SQL):
                await cur.execute(sql, columns)
            await cur.execute(DETACH_CHILDREN_SQL, columns)
            freed: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
            for d in doomed:
                freed[(d["thread_id"], d["checkpoint_ns"])].extend(
                    {"channel": ch, "version": str(v)} for ch, v in (d["versions"] or {}).items()
                )
            self.pending_snapshots.forget(sorted({t for t, _ in freed}))
            await cur.execute(FORGET_SEEDS_SQL, (sorted({t for t, _ in freed}),))
            for (thread_id, ns), versions in freed.items():
                await cur.execute(PRUNE_REFERENCED_BLOBS_SQL, (thread_id, ns))
                referenced = await cur.fetchall()
                for channel, garbage in garbage_blobs(versions, referenced).items():
                    await cur.execute(PRUNE_BLOBS_SQL, (thread_id, ns, channel, garbage))
        return set(freed)

    async def _scan_runs(self, cur: AsyncCursor[DictRow], run_ids: set[str]) -> list[DictRow]:
        """Runs by decrypting every row: only for an encrypting serde without an index key."""
        await cur.execute(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, metadata, "
            "checkpoint -> 'channel_versions' AS versions FROM checkpoints FOR UPDATE"
        )
        return [
            r
            for r in await cur.fetchall()
            if self.sealer.open_metadata(
                r["metadata"],
                checkpoint_place(
                    "metadata", r["thread_id"], r["checkpoint_ns"], r["checkpoint_id"]
                ),
            ).get("run_id")
            in run_ids
        ]

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self.delete_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy in SQL; with encryption on, the copies are then re-bound to the target thread
        in the same transaction (a value bound to the source would not decrypt there)."""
        params = {"src": str(source_thread_id), "dst": str(target_thread_id)}
        async with self.cursor() as cur, cur.connection.transaction():
            for sql in COPY_THREAD_SQL:
                await cur.execute(sql, params)
            await self.rebind_thread(cur, str(source_thread_id), str(target_thread_id))

    async def rebind_thread(self, cur: AsyncCursor[DictRow], source: str, target: str) -> None:
        """Re-bind the values of thread `target`, bound to `source` (copied or renamed rows),
        to `target`: re-encrypted at the cipher level, in the caller's transaction."""
        if not self.sealer.encrypted:
            return

        def moved(place_of: Any, row: DictRow, *keys: str) -> tuple[Place, Place]:
            where = [row[k] for k in keys]
            return place_of(source, *where), place_of(target, *where)

        await cur.execute(SELECT_REBOUND_BLOBS_SQL, (target,))
        for row in await cur.fetchall():
            old, new = moved(blob_place, row, "checkpoint_ns", "channel", "version")
            type_tag, blob = rebound(self.serde, (row["type"], row["blob"]), old, new)
            await cur.execute(
                UPDATE_REBOUND_BLOB_SQL,
                (type_tag, blob, target, row["checkpoint_ns"], row["channel"], row["version"]),
            )
        await cur.execute(SELECT_REBOUND_WRITES_SQL, (target,))
        for row in await cur.fetchall():
            old, new = moved(
                write_place, row, "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel"
            )
            type_tag, blob = rebound(self.serde, (row["type"], row["blob"]), old, new)
            await cur.execute(
                UPDATE_REBOUND_WRITE_SQL,
                (
                    type_tag,
                    blob,
                    target,
                    row["checkpoint_ns"],
                    row["checkpoint_id"],
                    row["task_id"],
                    row["idx"],
                ),
            )
        await cur.execute(SELECT_REBOUND_CHECKPOINTS_SQL, (target,))
        for row in await cur.fetchall():
            where = (row["checkpoint_ns"], row["checkpoint_id"])
            sealed = row["sealed"]
            if sealed is not None:
                old, new = (checkpoint_place("values", t, *where) for t in (source, target))
                sealed = Jsonb(rebound_envelope(self.serde, sealed, old, new))
            metadata = dict(row["metadata"])
            if SEALED in metadata:
                old, new = (checkpoint_place("metadata", t, *where) for t in (source, target))
                metadata[SEALED] = rebound_envelope(self.serde, metadata[SEALED], old, new)
            await cur.execute(
                UPDATE_REBOUND_CHECKPOINT_SQL,
                {
                    "sealed": sealed,
                    "metadata": Jsonb(metadata),
                    "thread": target,
                    "ns": where[0],
                    "id": where[1],
                },
            )


def _write_order(write: PendingWrite) -> tuple[Any, ...]:
    return writes_sort_key(write.task_path, write.task_id, write.idx)


# When each pooled connection was last given back (see `_check_if_idle`).
_RETURNED_AT: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()
IDLE_CHECK_SECONDS = 1.0


async def _mark_returned(conn: AsyncConnection[Any]) -> None:
    _RETURNED_AT[conn] = time.monotonic()


async def _check_if_idle(conn: AsyncConnection[Any]) -> None:
    """Check a connection taken from the pool if it sat idle for a while: one that died with
    its server (a restart) is replaced when taken instead of failing an operation, while a
    connection in steady use costs no extra round trip."""
    if time.monotonic() - _RETURNED_AT.get(conn, 0.0) > IDLE_CHECK_SECONDS:
        await AsyncConnectionPool.check_connection(conn)


@asynccontextmanager
async def open_pool(
    conn_string: str, max_size: int, timeout_seconds: float = 10.0
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[DictRow]]]:
    """A psycopg pool with the connection settings the Postgres savers require.

    `timeout_seconds` bounds the wait for a connection, so an unreachable Postgres fails an
    operation instead of hanging it.
    """
    cap_pool_retry_delays()
    pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
        conn_string,
        min_size=min(max_size, 2),
        max_size=max_size,
        kwargs=POOL_KWARGS,
        timeout=timeout_seconds,
        check=_check_if_idle,
        reset=_mark_returned,
        open=False,
    )
    await pool.open(wait=True, timeout=15)
    try:
        yield pool
    finally:
        await pool.close()


__all__ = [
    "CheckpointRecord",
    "CheckpointStoreUnavailable",
    "DurablePostgresSaver",
    "PreparedCheckpoint",
    "PreparedWrites",
    "open_pool",
]
