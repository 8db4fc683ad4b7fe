"""The invalidation journal: hot entries that may be stale, known to every replica.

A Postgres write whose Redis update failed or was skipped leaves Redis possibly stale for that
(thread, namespace). Such an entry is never served again: this process marks it suspect, and
the mark is journalled in Postgres (`threadline_hot_invalid`) and announced with NOTIFY, so
other replicas stop serving it too; a saver that starts, or recovers from a Redis error,
reloads the journal before it touches Redis again. A suspect is repaired by invalidating it in
Redis (which raises the entry's floor, so a delayed write cannot resurrect it) and then
deleting its journal row. Redis itself is reached only through the `invalidate` callable the
saver passes in, so the journal runs (and can be tested) with Postgres alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import psycopg

from threadline.checkpointers.durable import CheckpointStoreUnavailable, DurablePostgresSaver
from threadline.checkpointers.rows import Statement
from threadline.checkpointers.tiered.tasks import BackgroundTasks

logger = logging.getLogger("threadline.checkpointers.tiered")

CHANNEL = "threadline_hot_invalid"
WHOLE_THREAD = "\x1f*"  # namespace meaning "every namespace of the thread"
ANY_CHECKPOINT = ""  # `below` meaning "whatever the entry holds"

UPSERT_SQL = """
INSERT INTO threadline_hot_invalid (thread_id, checkpoint_ns, below) VALUES (%s, %s, %s)
ON CONFLICT (thread_id, checkpoint_ns) DO UPDATE SET below = CASE
    WHEN threadline_hot_invalid.below = '' OR EXCLUDED.below = '' THEN ''
    ELSE GREATEST(threadline_hot_invalid.below, EXCLUDED.below) END"""
NOTIFY_SQL = f"SELECT pg_notify('{CHANNEL}', %s)"
SELECT_SQL = "SELECT thread_id, checkpoint_ns, below FROM threadline_hot_invalid"
DELETE_SQL = """
DELETE FROM threadline_hot_invalid WHERE thread_id = %s AND checkpoint_ns = %s AND below = %s"""

POSTGRES_FAULTS = (psycopg.Error, CheckpointStoreUnavailable)

Key = tuple[str, str]  # (thread_id, checkpoint_ns)
# Invalidates an entry (or, for WHOLE_THREAD, every entry of a thread) in Redis, keeping
# checkpoints above `below` ('' = none); False if Redis could not be reached.
Invalidate = Callable[[Key, str], Awaitable[bool]]


def merge_below(old: str | None, new: str) -> str:
    if old is None:
        return new
    if ANY_CHECKPOINT in (old, new):
        return ANY_CHECKPOINT
    return max(old, new)


class InvalidationJournal:
    def __init__(self, durable: DurablePostgresSaver, invalidate: Invalidate) -> None:
        self.durable = durable
        self._invalidate = invalidate
        self.suspects: dict[Key, str] = {}
        self.stale = True  # reload before Redis is used again
        self._repairs: dict[Key, asyncio.Lock] = {}
        self._sweeping = False
        self._tasks = BackgroundTasks()

    def suspect(self, key: Key, below: str) -> None:
        """Mark an entry suspect in this process."""
        self.suspects[key] = merge_below(self.suspects.get(key), below)

    def statements(self, key: Key, below: str) -> list[Statement]:
        """The SQL that journals `key` for every replica (to run in a write's transaction)."""
        note = json.dumps({"t": key[0], "ns": key[1], "b": below})
        return [(UPSERT_SQL, (*key, below)), (NOTIFY_SQL, (note,))]

    async def record(self, key: Key, below: str) -> None:
        """Mark an entry suspect here and, durably, for every replica."""
        self.suspect(key, below)
        try:
            async with self.durable.cursor(pipeline=True) as cur:
                for sql, params in self.statements(key, below):
                    await cur.execute(sql, params)
        except POSTGRES_FAULTS:
            logger.exception("could not journal a stale Redis entry; this process skips it")

    async def ready(self, key: Key, redis_available: Callable[[], bool]) -> bool:
        """Whether `key`'s entry may be used now: the journal is loaded and the entry (and
        its thread) is not suspect, or has just been repaired."""
        if self.stale:
            try:
                await self.load()
            except POSTGRES_FAULTS:
                return False
            if self.suspects and not self._sweeping:
                self._tasks.spawn(self._sweep(redis_available))
        for candidate in ((key[0], WHOLE_THREAD), key):
            if candidate in self.suspects and not await self.repair(candidate):
                return False
        return True

    async def load(self) -> None:
        try:
            async with self.durable.cursor() as cur:
                await cur.execute(SELECT_SQL)
                rows = await cur.fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []  # set up without the journal: nothing was ever journalled
        for row in rows:
            self.suspect((row["thread_id"], row["checkpoint_ns"]), row["below"])
        self.stale = False

    def follow(self, postgres_url: str) -> None:
        """Listen for other replicas' journal entries (NOTIFY) until `aclose`."""
        self._tasks.spawn(self._listen(postgres_url))

    def _on_note(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            self.suspect((note["t"], note["ns"]), note["b"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed %s notification", CHANNEL)

    async def _listen(self, url: str) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self.load()
                    async for note in conn.notifies():
                        self._on_note(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; a dead listener only costs latency
                logger.warning("journal listener reconnecting after %s", type(exc).__name__)
                self.stale = True
                await asyncio.sleep(1.0)

    async def repair(self, key: Key) -> bool:
        """Invalidate a suspect entry in Redis, then clear its journal row (once at a time:
        a second invalidation after a re-warm would only cost a cold read)."""
        lock = self._repairs.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self.suspects:
                return True
            repaired = await self._repair(key)
        if not lock.locked():
            self._repairs.pop(key, None)
        return repaired

    async def _repair(self, key: Key) -> bool:
        below = self.suspects[key]
        if not await self._invalidate(key, below):
            return False
        try:
            async with self.durable.cursor() as cur:
                await cur.execute(DELETE_SQL, (*key, below))
        except POSTGRES_FAULTS:
            return False
        if self.suspects.get(key) == below:
            del self.suspects[key]
        return True

    async def _sweep(self, redis_available: Callable[[], bool]) -> None:
        """After recovering, repair every known suspect, not only the ones being read."""
        self._sweeping = True
        try:
            for key in list(self.suspects):
                if not redis_available():
                    return
                if key in self.suspects:
                    await self.repair(key)
        finally:
            self._sweeping = False

    async def aclose(self) -> None:
        await self._tasks.aclose()
