"""`SqliteSaver`: LangGraph's async SQLite saver, with turn receipts and thread records beside it.

Their tables and the triggers that fill them live in `sql/sqlite_*.sql`: the stock `INSERT` of
a checkpoint records its receipts and upserts its thread's record in the same statement, so the
stock write path stays untouched and cannot store one without the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from threadline.checkpointers.places import write_place
from threadline.checkpointers.receipts import Receipt, live
from threadline.checkpointers.records import (
    RECORD_COLUMNS,
    RecordQuery,
    ThreadRecord,
    expired_sql,
    listing_sql,
    update_sql,
)
from threadline.checkpointers.serde import is_encrypting, rebound
from threadline.checkpointers.sqlite_bound import BoundSqlitePaths, sqlite_checkpoint_place


def _sql(name: str) -> str:
    return resources.files(__package__).joinpath(f"sql/{name}").read_text()


SCHEMA = _sql("sqlite_receipts.sql") + _sql("sqlite_threads.sql")
# `ALTER TABLE ... ADD COLUMN <name> ...` statements, by the column they add.
RETENTION_COLUMNS = {
    line.split()[5]: line
    for line in _sql("sqlite_threads_retention.sql").splitlines()
    if line.startswith("ALTER TABLE")
}
SELECT_RECEIPT_SQL = """
SELECT name, digest, checkpoint_ns, checkpoint_id, expires_at
FROM threadline_turn_receipts WHERE thread_id = ? AND name = ?
"""
SELECT_RECORD_SQL = f"SELECT {RECORD_COLUMNS} FROM threadline_threads WHERE thread_key = ?"
EXPIRED_RECORDS_SQL = expired_sql("?")
# Every checkpoint of a thread but one (which loses its parent), the others' writes and the
# thread's receipts; the record stays. (Channel values live in the checkpoint row here.)
DELETE_CHECKPOINTS_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = :thread AND checkpoint_id IS NOT :keep",
    "DELETE FROM writes WHERE thread_id = :thread AND checkpoint_id IS NOT :keep",
    "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = :thread",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = :thread",
)
DELETE_THREAD_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = ?",
    "DELETE FROM writes WHERE thread_id = ?",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = ?",
    "DELETE FROM threadline_threads WHERE thread_key = ?",
)


def record_of_row(row: Any) -> ThreadRecord:
    """A thread record from a row of `RECORD_COLUMNS`."""
    values = dict(zip(RECORD_COLUMNS.split(", "), row, strict=True))
    return ThreadRecord(
        **{**values, "metadata": json.loads(values["metadata"]), "hold": bool(values["hold"])}
    )


def _encoded(name: str, value: Any) -> Any:
    return json.dumps(value) if name == "metadata" else value


class SqliteSaver(BoundSqlitePaths):
    _tables_ready = False

    async def setup(self) -> None:
        await super().setup()
        if self._tables_ready:
            return
        async with self.lock:
            # Deleted rows are overwritten, not left readable in free pages of the file.
            await self.conn.execute("PRAGMA secure_delete = ON")
            await self.conn.executescript(SCHEMA)
            async with self.conn.execute("PRAGMA table_info(threadline_threads)") as cur:
                present = {row[1] for row in await cur.fetchall()}
            for column, statement in RETENTION_COLUMNS.items():
                if column not in present:
                    await self.conn.execute(statement)
            await self.conn.commit()
            self._tables_ready = True

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        await self.setup()
        async with self.lock, self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        rows = await self._fetch(SELECT_RECEIPT_SQL, (thread_id, name))
        return live(Receipt(*rows[0])) if rows else None

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return None  # the trigger upserts it: a read of the local file tells

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        rows = await self._fetch(SELECT_RECORD_SQL, (thread_key,))
        return record_of_row(rows[0]) if rows else None

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        sql, params = listing_sql("?", query)
        return [record_of_row(row) for row in await self._fetch(sql, tuple(params))]

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        await self.setup()
        sql, params = update_sql("?", thread_key, changes, expect, _encoded)
        async with self.lock:
            async with self.conn.execute(sql, params) as cur:
                rows = list(await cur.fetchall())
            await self.conn.commit()
        return record_of_row(rows[0]) if rows else None

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        rows = await self._fetch(EXPIRED_RECORDS_SQL, (default_ttl, now, limit))
        return [record_of_row(row) for row in rows]

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        await self.setup()
        async with self.lock, self.conn.cursor() as cur:
            for sql in DELETE_CHECKPOINTS_SQL:
                await cur.execute(sql, {"thread": thread_key, "keep": keep})
            await self.conn.commit()
            await cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def rebind_thread(self, source: str, target: str) -> None:
        """Re-bind the values of thread `target`, bound to `source` (renamed rows), to
        `target`, in the caller's transaction (the caller holds `lock`)."""
        if not is_encrypting(self.serde):
            return
        async with self.conn.execute(
            "SELECT checkpoint_ns, checkpoint_id, type, checkpoint FROM checkpoints"
            " WHERE thread_id = ? AND type LIKE '%+%'",
            (target,),
        ) as cur:
            for ns, checkpoint_id, type_tag, blob in list(await cur.fetchall()):
                old, new = (sqlite_checkpoint_place(t, ns, checkpoint_id) for t in (source, target))
                await self.conn.execute(
                    "UPDATE checkpoints SET type = ?, checkpoint = ? WHERE thread_id = ?"
                    " AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (*rebound(self.serde, (type_tag, blob), old, new), target, ns, checkpoint_id),
                )
        async with self.conn.execute(
            "SELECT checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value FROM writes"
            " WHERE thread_id = ? AND type LIKE '%+%'",
            (target,),
        ) as cur:
            for ns, checkpoint_id, task_id, idx, channel, type_tag, blob in list(
                await cur.fetchall()
            ):
                old, new = (
                    write_place(t, ns, checkpoint_id, task_id, idx, channel)
                    for t in (source, target)
                )
                await self.conn.execute(
                    "UPDATE writes SET type = ?, value = ? WHERE thread_id = ?"
                    " AND checkpoint_ns = ? AND checkpoint_id = ? AND task_id = ? AND idx = ?",
                    (*rebound(self.serde, (type_tag, blob), old, new), target, ns, checkpoint_id,
                     task_id, idx),
                )  # fmt: skip

    async def adelete_thread(self, thread_id: str) -> None:
        """The thread's checkpoints, writes, receipts and record, in one transaction; then the
        write-ahead log is folded into the file, so no copy of them is left behind there."""
        await self.setup()
        async with self.lock, self.conn.cursor() as cur:
            for sql in DELETE_THREAD_SQL:
                await cur.execute(sql, (str(thread_id),))
            await self.conn.commit()
            await cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
