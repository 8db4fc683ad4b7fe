"""Key rotation: every encrypted value re-encrypted under the key ring's first key.

Values are re-encrypted at the cipher level (decrypted under whichever key they name, encrypted
under the first), never deserialised, so they come back byte-identical once decrypted. On
Postgres each value is bound to its place on the way (see `places`): rows written before
binding are migrated by the same command, even without a new key. Work
goes in batches, each committed on its own, selecting only rows not yet under the current key:
a rotation killed at any point is resumed by running it again, and no row is ever left
unreadable (a row is rewritten whole or not at all). Afterwards every old key can be dropped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb

from threadline.checkpointers.durable import SEALED_VALUES
from threadline.checkpointers.places import Place, blob_place, checkpoint_place, write_place
from threadline.checkpointers.records import ThreadRecord
from threadline.checkpointers.sealed_records import RecordSealer
from threadline.checkpointers.serde import KeyRing, ValueSealer
from threadline.checkpointers.sqlite_bound import sqlite_checkpoint_place

Progress = Callable[[str, int], None]  # (what, rows just rotated)

# Rows of a table whose type tag names a cipher other than the current one. Rotated rows stop
# matching, so the same query pages through the rest.
# Postgres tables: (the row's key, where its value belongs).
POSTGRES_TYPED_TABLES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Place]]] = {
    "checkpoint_blobs": (
        ("thread_id", "checkpoint_ns", "channel", "version"),
        lambda r: blob_place(r["thread_id"], r["checkpoint_ns"], r["channel"], r["version"]),
    ),
    "checkpoint_writes": (
        ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        lambda r: write_place(
            r["thread_id"],
            r["checkpoint_ns"],
            r["checkpoint_id"],
            r["task_id"],
            r["idx"],
            r["channel"],
        ),
    ),
}
# SQLite tables: (the row's key, the value's column, where its value belongs).
SQLITE_TYPED_TABLES: dict[str, tuple[tuple[str, ...], str, Callable[..., Place]]] = {
    "checkpoints": (
        ("thread_id", "checkpoint_ns", "checkpoint_id"),
        "checkpoint",
        sqlite_checkpoint_place,
    ),
    "writes": (
        ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel"),
        "value",
        write_place,
    ),
}
POSTGRES_CHECKPOINTS_SQL = f"""
SELECT thread_id, checkpoint_ns, checkpoint_id, checkpoint -> '{SEALED_VALUES}' AS sealed,
    metadata
FROM checkpoints
WHERE split_part(checkpoint -> '{SEALED_VALUES}' ->> 0, '+', 2) <> %(current)s
    OR split_part(metadata -> '$enc' ->> 0, '+', 2) <> %(current)s
LIMIT %(batch)s
"""
POSTGRES_UPDATE_CHECKPOINT_SQL = f"""
UPDATE checkpoints SET
    checkpoint = CASE WHEN %(sealed)s::jsonb IS NULL THEN checkpoint
        ELSE jsonb_set(checkpoint, '{{{SEALED_VALUES}}}', %(sealed)s::jsonb) END,
    metadata = %(metadata)s
WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(checkpoint_ns)s
    AND checkpoint_id = %(checkpoint_id)s
"""


# Thread records whose sealed text (see `sealed_records`: `$enc:<type>:<base64>`, or
# `{"$enc": [type, base64]}` metadata) names another cipher.
POSTGRES_STALE_RECORDS = """
    (left(thread_id, 5) = '$enc:'
        AND split_part(split_part(thread_id, ':', 2), '+', 2) <> %(current)s)
    OR (left(title, 5) = '$enc:' AND split_part(split_part(title, ':', 2), '+', 2) <> %(current)s)
    OR split_part(metadata -> '$enc' ->> 0, '+', 2) <> %(current)s
"""
# SQLite has no split_part: the cipher is what lies between the type tag's '+' and the ':'.
_SQLITE_TEXT_CIPHER = (
    "substr({c}, instr({c}, '+') + 1, instr(substr({c}, 6), ':') + 4 - instr({c}, '+'))"
)
SQLITE_STALE_RECORDS = f"""
    (substr(thread_id, 1, 5) = '$enc:'
        AND {_SQLITE_TEXT_CIPHER.format(c="thread_id")} <> :current)
    OR (substr(title, 1, 5) = '$enc:' AND {_SQLITE_TEXT_CIPHER.format(c="title")} <> :current)
    OR substr(json_extract(metadata, '$."$enc"[0]'),
        instr(json_extract(metadata, '$."$enc"[0]'), '+') + 1) <> :current
"""


def retyped(
    ring: KeyRing, type_tag: str, blob: bytes, place: Place | None = None
) -> tuple[str, bytes]:
    """The same value under the current key (bound to `place` when one is given)."""
    base, _, name = type_tag.partition("+")
    new_name, ciphertext = ring.encrypt(ring.decrypt(name, blob, place), place)
    return f"{base}+{new_name}", ciphertext


def _envelope(ring: KeyRing, envelope: list[str], place: Place) -> list[str]:
    type_tag, blob = retyped(ring, envelope[0], base64.b64decode(envelope[1]), place)
    return [type_tag, base64.b64encode(blob).decode()]


async def rotate_postgres(saver: Any, ring: KeyRing, batch: int, progress: Progress) -> int:
    """Rotate a Postgres saver's blobs, writes, sealed checkpoint values and metadata."""
    current = ring.current_name
    sealer = ValueSealer(saver.serde)
    rotated = 0
    for table, (keys, place_of) in POSTGRES_TYPED_TABLES.items():
        select = (
            f"SELECT {', '.join(keys)}, channel, type, blob FROM {table} "
            "WHERE type LIKE '%%+%%' AND split_part(type, '+', 2) <> %s LIMIT %s"
        )
        update = f"UPDATE {table} SET type = %s, blob = %s WHERE " + " AND ".join(
            f"{k} = %s" for k in keys
        )
        while True:
            async with saver.cursor() as cur, cur.connection.transaction():
                await cur.execute(select, (current, batch))
                rows = await cur.fetchall()
                for row in rows:
                    type_tag, blob = retyped(ring, row["type"], bytes(row["blob"]), place_of(row))
                    await cur.execute(update, (type_tag, blob, *(row[k] for k in keys)))
            rotated += len(rows)
            progress(table, len(rows))
            if len(rows) < batch:
                break
    while True:
        async with saver.cursor() as cur, cur.connection.transaction():
            await cur.execute(POSTGRES_CHECKPOINTS_SQL, {"current": current, "batch": batch})
            rows = await cur.fetchall()
            for row in rows:
                sealed = row["sealed"]
                metadata = row["metadata"]
                where = (row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"])
                at = checkpoint_place("metadata", *where)
                await cur.execute(
                    POSTGRES_UPDATE_CHECKPOINT_SQL,
                    {
                        "sealed": (
                            Jsonb(_envelope(ring, sealed, checkpoint_place("values", *where)))
                            if sealed
                            else None
                        ),
                        "metadata": Jsonb(
                            sealer.seal_metadata(sealer.open_metadata(metadata, at), at)
                            if "$enc" in metadata
                            else metadata
                        ),
                        "thread_id": row["thread_id"],
                        "checkpoint_ns": row["checkpoint_ns"],
                        "checkpoint_id": row["checkpoint_id"],
                    },
                )
        rotated += len(rows)
        progress("checkpoints", len(rows))
        if len(rows) < batch:
            break
    return rotated + await _rotate_records(saver, "postgres", batch, progress)


async def rotate_sqlite(saver: Any, ring: KeyRing, batch: int, progress: Progress) -> int:
    """Rotate an SQLite saver's checkpoints and writes, binding each to its place."""
    current = ring.current_name
    rotated = 0
    await saver.setup()
    for table, (keys, column, place_of) in SQLITE_TYPED_TABLES.items():
        select = (
            f"SELECT {', '.join(keys)}, type, {column} FROM {table} "
            "WHERE type LIKE '%+%' AND substr(type, instr(type, '+') + 1) <> ? LIMIT ?"
        )
        update = f"UPDATE {table} SET type = ?, {column} = ? WHERE " + " AND ".join(
            f"{k} = ?" for k in keys
        )
        while True:
            async with saver.lock:
                async with saver.conn.execute(select, (current, batch)) as cur:
                    rows = list(await cur.fetchall())
                for row in rows:
                    place = place_of(*row[: len(keys)])
                    type_tag, blob = retyped(ring, row[-2], bytes(row[-1]), place)
                    await saver.conn.execute(update, (type_tag, blob, *row[: len(keys)]))
                await saver.conn.commit()
            rotated += len(rows)
            progress(table, len(rows))
            if len(rows) < batch:
                break
    return rotated + await _rotate_records(saver, "sqlite", batch, progress)


async def _rotate_records(saver: Any, dialect: str, batch: int, progress: Progress) -> int:
    """Re-seal thread records' sealed text under the current key. Each record is updated only
    if it is still as read, so a rename meanwhile is never overwritten (it is sealed under the
    current key already)."""
    sealer = RecordSealer(saver.serde)
    current = saver.serde.cipher.current_name
    postgres = dialect == "postgres"
    where = POSTGRES_STALE_RECORDS if postgres else SQLITE_STALE_RECORDS
    placeholder = "%s" if postgres else "?"
    select = (
        f"SELECT thread_key, thread_id, title, metadata FROM threadline_threads WHERE {where} "
        + ("LIMIT %(batch)s" if postgres else "LIMIT :batch")
    )
    update = (
        f"UPDATE threadline_threads SET thread_id = {placeholder}, title = {placeholder}, "
        f"metadata = {placeholder} WHERE thread_key = {placeholder} AND thread_id = "
        f"{placeholder} AND title = {placeholder} AND metadata = {placeholder}"
    )
    rotated = 0
    while True:
        if postgres:
            async with saver.cursor() as cur, cur.connection.transaction():
                await cur.execute(select, {"current": current, "batch": batch})
                rows = [tuple(row.values()) for row in await cur.fetchall()]
                for row in rows:
                    await cur.execute(update, _resealed(sealer, row, Jsonb))
        else:
            async with saver.lock:
                async with saver.conn.execute(select, {"current": current, "batch": batch}) as c:
                    rows = [tuple(row) for row in await c.fetchall()]
                for row in rows:
                    await saver.conn.execute(update, _resealed(sealer, row, json.dumps))
                await saver.conn.commit()
        rotated += len(rows)
        progress("threadline_threads", len(rows))
        if len(rows) < batch:
            return rotated


def _resealed(sealer: Any, row: tuple[Any, ...], encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """The UPDATE's parameters: the record's text sealed anew, then the row as it was read."""
    thread_key, thread_id, title, raw_metadata = row
    metadata = json.loads(raw_metadata) if isinstance(raw_metadata, str) else raw_metadata
    stored = ThreadRecord(thread_key, "", thread_id, None, title, 0.0, 0.0, 0, metadata)
    fresh = sealer.seal(sealer.open(stored))
    as_read = raw_metadata if isinstance(raw_metadata, str) else encode(raw_metadata)
    return (fresh.thread_id, fresh.title, encode(fresh.metadata), thread_key, thread_id, title,
            as_read)  # fmt: skip


def sql_store(saver: Any) -> tuple[Any, str] | None:
    """The saver holding a deployment's SQL tables and its dialect ("postgres" for the durable
    saver, alone or as tiered's durable tier; "sqlite"), or None (memory: nothing persists)."""
    from threadline.checkpointers.durable import DurablePostgresSaver
    from threadline.checkpointers.sqlite import SqliteSaver

    durable = getattr(saver, "durable", saver)
    if isinstance(durable, DurablePostgresSaver):
        return durable, "postgres"
    if isinstance(saver, SqliteSaver):
        return saver, "sqlite"
    return None


async def rotate(saver: Any, ring: KeyRing, batch: int, progress: Progress) -> int:
    """Rotate whatever the saver's store holds (see `rotate_postgres`, `rotate_sqlite`)."""
    match sql_store(saver):
        case (store, "postgres"):
            return await rotate_postgres(store, ring, batch, progress)
        case (store, "sqlite"):
            return await rotate_sqlite(store, ring, batch, progress)
    return 0


async def stale_rows(saver: Any, ring: KeyRing) -> int:
    """How many rows a rotation still has to rewrite (for a progress bar)."""
    found = sql_store(saver)
    if found is None:
        return 0
    store, dialect = found
    current = ring.current_name
    total = 0
    if dialect == "postgres":
        async with store.cursor() as cur:
            for table in POSTGRES_TYPED_TABLES:
                await cur.execute(
                    f"SELECT count(*) AS n FROM {table} "
                    "WHERE type LIKE '%%+%%' AND split_part(type, '+', 2) <> %s",
                    (current,),
                )
                found_rows = await cur.fetchone()
                total += found_rows["n"] if found_rows else 0
            await cur.execute(
                f"SELECT count(*) AS n FROM threadline_threads WHERE {POSTGRES_STALE_RECORDS}",
                {"current": current},
            )
            found_rows = await cur.fetchone()
            total += found_rows["n"] if found_rows else 0
        return total
    await store.setup()
    for table in SQLITE_TYPED_TABLES:
        async with store.conn.execute(
            f"SELECT count(*) FROM {table} WHERE type LIKE '%+%' "
            "AND substr(type, instr(type, '+') + 1) <> ?",
            (current,),
        ) as cur:
            row = await cur.fetchone()
            total += row[0] if row else 0
    async with store.conn.execute(
        f"SELECT count(*) FROM threadline_threads WHERE {SQLITE_STALE_RECORDS}",
        {"current": current},
    ) as cur:
        row = await cur.fetchone()
        total += row[0] if row else 0
    return total
