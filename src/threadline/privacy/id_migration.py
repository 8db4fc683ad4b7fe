"""Moving threads stored under readable ids to hashed ones (see `names`), in place.

A store that was encrypted before thread ids were hashed keeps each thread under its readable
key. Every row of such a thread — in each table with a `thread_id` column — is renamed to the
hashed key, and its record gets the hashed key, the tenant's tag and sealed text, all in one
transaction per thread: killed at any point, each thread is either moved or not, and running
the migration again finishes it. The server refuses to start while such threads remain.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from threadline.checkpointers.records import RECORD_COLUMNS, RECORD_METADATA, ThreadRecord
from threadline.checkpointers.rotation import sql_store
from threadline.checkpointers.sealed_records import RecordSealer
from threadline.privacy.names import HASHED_PREFIX, ThreadNaming

Progress = Callable[[int], None]  # threads just moved
READABLE_KEY = f"substr(thread_key, 1, {len(HASHED_PREFIX)}) <> '{HASHED_PREFIX}'"

POSTGRES_THREAD_TABLES_SQL = """
SELECT table_name FROM information_schema.columns
WHERE column_name = 'thread_id' AND table_schema = current_schema()
    AND table_name <> 'threadline_threads'
"""
SQLITE_THREAD_TABLES_SQL = """
SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) p
WHERE m.type = 'table' AND p.name = 'thread_id' AND m.name <> 'threadline_threads'
"""


@dataclass(frozen=True)
class MovedThread:
    old_key: str
    new_key: str
    status: str


async def count_readable_threads(saver: Any) -> int:
    """Threads whose record still has a readable key."""
    found = sql_store(saver)
    if found is None:
        return 0
    store, kind = found
    sql = f"SELECT count(*) FROM threadline_threads WHERE {READABLE_KEY}"
    if kind == "postgres":
        async with store.cursor() as cur:
            await cur.execute(sql.replace("count(*)", "count(*) AS n"))
            row = await cur.fetchone()
            return int(row["n"]) if row else 0
    await store.setup()
    async with store.conn.execute(sql) as cur:
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def move_to_hashed_ids(
    saver: Any, naming: ThreadNaming, batch: int, progress: Progress
) -> list[MovedThread]:
    """Move every thread with a readable key to its hashed key; what was moved."""
    assert naming.hashed, "ids are hashed only with encryption on"
    found = sql_store(saver)
    if found is None:
        return []
    store, kind = found
    sealer = RecordSealer(store.serde)
    moved: list[MovedThread] = []
    mark = "%s" if kind == "postgres" else "?"
    select = f"SELECT {RECORD_COLUMNS} FROM threadline_threads WHERE {READABLE_KEY} LIMIT {mark}"
    while True:
        if kind == "postgres":
            page = await _move_postgres_page(store, select, batch, naming, sealer)
        else:
            page = await _move_sqlite_page(store, select, batch, naming, sealer)
        moved += page
        progress(len(page))
        if len(page) < batch:
            return moved


def _moved_record(record: ThreadRecord, naming: ThreadNaming, sealer: RecordSealer) -> ThreadRecord:
    """The record under its hashed key, its text sealed for it there."""
    moved = dataclasses.replace(
        sealer.open(record),
        thread_key=naming.stored_key(record.thread_key),
        tenant=naming.tenant_tag(record.tenant),
    )
    return sealer.seal(moved)


async def _move_postgres_page(
    store: Any, select: str, batch: int, naming: ThreadNaming, sealer: RecordSealer
) -> list[MovedThread]:
    from psycopg.types.json import Jsonb

    moved = []
    async with store.cursor() as cur:
        await cur.execute(POSTGRES_THREAD_TABLES_SQL)
        tables = [row["table_name"] for row in await cur.fetchall()]
    async with store.cursor() as cur, cur.connection.transaction():
        await cur.execute(select, (batch,))
        records = [ThreadRecord(**row) for row in await cur.fetchall()]
        for record in records:
            new = _moved_record(record, naming, sealer)
            for table in tables:
                await cur.execute(
                    f"UPDATE {table} SET thread_id = %s WHERE thread_id = %s",
                    (new.thread_key, record.thread_key),
                )
            # Values bound to the old key are bound to the new one (see `places`).
            await store.rebind_thread(cur, record.thread_key, new.thread_key)
            await cur.execute(
                "UPDATE threadline_threads SET thread_key = %s, tenant = %s, thread_id = %s, "
                "title = %s, metadata = %s WHERE thread_key = %s",
                (new.thread_key, new.tenant, new.thread_id, new.title, Jsonb(new.metadata),
                 record.thread_key),
            )  # fmt: skip
            moved.append(MovedThread(record.thread_key, new.thread_key, record.status))
    return moved


async def _move_sqlite_page(
    store: Any, select: str, batch: int, naming: ThreadNaming, sealer: RecordSealer
) -> list[MovedThread]:
    from threadline.checkpointers.sqlite import record_of_row

    moved = []
    await store.setup()
    async with store.lock:
        async with store.conn.execute(SQLITE_THREAD_TABLES_SQL) as cur:
            tables = [row[0] for row in await cur.fetchall()]
        async with store.conn.execute(select, (batch,)) as cur:
            records = [record_of_row(row) for row in await cur.fetchall()]
        for record in records:
            new = _moved_record(record, naming, sealer)
            for table in tables:
                await store.conn.execute(
                    f"UPDATE {table} SET thread_id = ? WHERE thread_id = ?",
                    (new.thread_key, record.thread_key),
                )
            await store.rebind_thread(record.thread_key, new.thread_key)
            # SQLite keeps checkpoint metadata in clear JSON: the record each turn carried
            # there (readable key and tenant) goes; the table has the record.
            await store.conn.execute(
                f"UPDATE checkpoints SET metadata = json_remove(metadata, '$.{RECORD_METADATA}') "
                "WHERE thread_id = ?",
                (new.thread_key,),
            )
            await store.conn.execute(
                "UPDATE threadline_threads SET thread_key = ?, tenant = ?, thread_id = ?, "
                "title = ?, metadata = ? WHERE thread_key = ?",
                (new.thread_key, new.tenant, new.thread_id, new.title, json.dumps(new.metadata),
                 record.thread_key),
            )  # fmt: skip
            moved.append(MovedThread(record.thread_key, new.thread_key, record.status))
        await store.conn.commit()
    return moved


__all__ = ["MovedThread", "count_readable_threads", "move_to_hashed_ids"]
