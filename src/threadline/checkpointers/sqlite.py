"""`SqliteSaver`: LangGraph's async SQLite saver, with turn receipts and thread records beside it.

Their tables and the triggers that fill them live in `sql/sqlite_*.sql`: the stock `INSERT` of
a checkpoint records its receipts and upserts its thread's record in the same statement, so the
stock write path stays untouched and cannot store one without the other.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from threadline.checkpointers.receipts import Receipt, live
from threadline.checkpointers.records import RECORD_COLUMNS, RecordQuery, ThreadRecord, listing_sql

SCHEMA = "\n".join(
    resources.files(__package__).joinpath(f"sql/{name}").read_text()
    for name in ("sqlite_receipts.sql", "sqlite_threads.sql")
)
SELECT_RECEIPT_SQL = """
SELECT name, digest, checkpoint_ns, checkpoint_id, expires_at
FROM threadline_turn_receipts WHERE thread_id = ? AND name = ?
"""
SELECT_RECORD_SQL = f"SELECT {RECORD_COLUMNS} FROM threadline_threads WHERE thread_key = ?"
UPDATE_RECORD_SQL = """
UPDATE threadline_threads SET title = coalesce(?, title), metadata = coalesce(?, metadata)
WHERE thread_key = ?
"""
DELETE_THREAD_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = ?",
    "DELETE FROM writes WHERE thread_id = ?",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = ?",
    "DELETE FROM threadline_threads WHERE thread_key = ?",
)


def _record(row: Any) -> ThreadRecord:
    values = dict(zip(RECORD_COLUMNS.split(", "), row, strict=True))
    return ThreadRecord(**{**values, "metadata": json.loads(values["metadata"])})


class SqliteSaver(AsyncSqliteSaver):
    _tables_ready = False

    async def setup(self) -> None:
        await super().setup()
        if self._tables_ready:
            return
        async with self.lock:
            # Deleted rows are overwritten, not left readable in free pages of the file.
            await self.conn.execute("PRAGMA secure_delete = ON")
            await self.conn.executescript(SCHEMA)
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
        return _record(rows[0]) if rows else None

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        sql, params = listing_sql("?", query)
        return [_record(row) for row in await self._fetch(sql, tuple(params))]

    async def aupdate_thread_record(
        self, thread_key: str, *, title: str | None, metadata: dict[str, Any] | None
    ) -> ThreadRecord | None:
        await self.setup()
        encoded = json.dumps(metadata) if metadata is not None else None
        async with self.lock:
            await self.conn.execute(UPDATE_RECORD_SQL, (title, encoded, thread_key))
            await self.conn.commit()
        return await self.aget_thread_record(thread_key)

    async def adelete_thread(self, thread_id: str) -> None:
        """The thread's checkpoints, writes, receipts and record, in one transaction; then the
        write-ahead log is folded into the file, so no copy of them is left behind there."""
        await self.setup()
        async with self.lock, self.conn.cursor() as cur:
            for sql in DELETE_THREAD_SQL:
                await cur.execute(sql, (str(thread_id),))
            await self.conn.commit()
            await cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
