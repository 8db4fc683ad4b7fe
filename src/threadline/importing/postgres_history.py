"""langchain-postgres `PostgresChatMessageHistory`: one row per message in a table of its own
(`id SERIAL, session_id UUID, message JSONB, created_at TIMESTAMPTZ`).

Read with the library's own query (a session's rows `ORDER BY id`) and its decoder, plus the
row id and time it does not return: the row id names a message stored without an id, and the
times give the thread's created/updated.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from threadline.importing.sessions import (
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    decoded_session,
)

SOURCE = "postgres-history"
COLUMNS = frozenset({"id", "session_id", "message", "created_at"})


class PostgresHistoryReader:
    def __init__(self, conn: psycopg.AsyncConnection[Any], table: str) -> None:
        self._conn = conn
        self._table = table
        self._session_ids: list[str] | None = None

    async def _sessions(self) -> list[str]:
        if self._session_ids is None:  # oldest conversation first
            query = sql.SQL(
                "SELECT session_id::text FROM {} GROUP BY session_id ORDER BY min(id)"
            ).format(sql.Identifier(self._table))
            async with self._conn.cursor() as cur:
                await cur.execute(query)
                self._session_ids = [row[0] for row in await cur.fetchall()]
        return self._session_ids

    async def count_sessions(self) -> int:
        return len(await self._sessions())

    async def sessions(self) -> AsyncIterator[SourceSession]:
        query = sql.SQL("SELECT * FROM {} WHERE session_id = %(session_id)s ORDER BY id").format(
            sql.Identifier(self._table)
        )
        for session_id in await self._sessions():
            async with self._conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, {"session_id": session_id})
                rows = await cur.fetchall()
            if not rows:  # cleared since the listing
                continue
            first, last = rows[0], rows[-1]
            yield decoded_session(
                SOURCE,
                self._table,
                session_id,
                [(row["id"], row["message"]) for row in rows],
                created_at=first["created_at"].timestamp(),
                updated_at=last["created_at"].timestamp(),
                fields={k: v for k, v in first.items() if k not in COLUMNS},
            )


@asynccontextmanager
async def open_history(url: str, table: str | None) -> AsyncIterator[PostgresHistoryReader]:
    table = table or "chat_history"
    if not re.fullmatch(r"\w+", table):  # the library's own rule for table names
        raise SourceError(f"--table {table!r}: letters, digits and underscores only")
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise SourceUnreachableError(f"cannot reach Postgres: {_first_line(exc)}") from None
    except psycopg.ProgrammingError as exc:  # a malformed URL
        raise SourceError(f"--url is not a Postgres URL: {_first_line(exc)}") from None
    async with conn:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = %s AND table_schema = ANY(current_schemas(false))",
                (table,),
            )
            columns = {row[0] for row in await cur.fetchall()}
        if not columns:
            raise SourceMissingError(f"no table {table!r} in that database")
        if missing := COLUMNS - columns:
            raise SourceMissingError(
                f"table {table!r} is not a PostgresChatMessageHistory table "
                f"(no {', '.join(sorted(missing))})"
            )
        yield PostgresHistoryReader(conn, table)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
