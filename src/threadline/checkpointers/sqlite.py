"""`SqliteSaver`: LangGraph's async SQLite saver, keeping turn receipts beside the checkpoints.

The receipts table and the trigger that fills it live in `sql/sqlite_receipts.sql`: the stock
`INSERT` of a checkpoint records its receipts in the same statement, so the stock write path
stays untouched and cannot store one without the other.
"""

from __future__ import annotations

from importlib import resources

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from threadline.checkpointers.receipts import Receipt, live

RECEIPTS_SCHEMA = resources.files(__package__).joinpath("sql/sqlite_receipts.sql").read_text()
SELECT_RECEIPT_SQL = """
SELECT name, digest, checkpoint_ns, checkpoint_id, expires_at
FROM threadline_turn_receipts WHERE thread_id = ? AND name = ?
"""
DELETE_THREAD_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = ?",
    "DELETE FROM writes WHERE thread_id = ?",
    "DELETE FROM threadline_turn_receipts WHERE thread_id = ?",
)


class SqliteSaver(AsyncSqliteSaver):
    _receipts_ready = False

    async def setup(self) -> None:
        await super().setup()
        if self._receipts_ready:
            return
        async with self.lock:
            await self.conn.executescript(RECEIPTS_SCHEMA)
            await self.conn.commit()
            self._receipts_ready = True

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        await self.setup()
        async with self.lock, self.conn.execute(SELECT_RECEIPT_SQL, (thread_id, name)) as cur:
            row = await cur.fetchone()
        return live(Receipt(*row)) if row else None

    async def adelete_thread(self, thread_id: str) -> None:
        """The thread's checkpoints, writes and receipts, in one transaction."""
        await self.setup()
        async with self.lock, self.conn.cursor() as cur:
            for sql in DELETE_THREAD_SQL:
                await cur.execute(sql, (str(thread_id),))
            await self.conn.commit()
