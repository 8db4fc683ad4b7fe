"""langchain-community `SQLChatMessageHistory`: one row per message in any SQLAlchemy database
(`id INTEGER PRIMARY KEY, session_id TEXT, message TEXT` holding `message_to_dict` JSON;
table `message_store` by default).

Read in the library's own order (a session's rows by `id`) with its decoding (its
`DefaultMessageConverter`: `json.loads`, then `messages_from_dict`); the row id names a
message stored without an id. Extra columns (a custom converter's) are fields `--user-from`
may name; a `created_at` column of times gives the thread's created/updated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, OperationalError

from threadline.importing.sessions import (
    SourceError,
    SourceMissingError,
    SourceSession,
    SourceUnreachableError,
    decoded_session,
)

SOURCE = "sql-history"
COLUMNS = frozenset({"id", "session_id", "message"})
BATCH = 1000
T = TypeVar("T")


class SqlHistoryReader:
    """Reads the whole table in one pass ordered by `(session_id, id)`, streamed in batches:
    the library creates no index on `session_id`, so a query per session would scan the
    table once per session. All I/O runs on one thread of its own (SQLite connections stay
    on the thread that made them)."""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self._engine = engine
        self._table = table
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-history")

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    def _count(self) -> int:
        query = sa.select(sa.func.count(sa.distinct(self._table.c.session_id)))
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    async def count_sessions(self) -> int:
        return await self._call(self._count)

    def _grouped(self) -> Generator[list[dict[str, Any]], None, None]:
        """Each session's rows, in order (the library's order: by `id`)."""
        t = self._table
        query = sa.select(t).where(t.c.session_id.is_not(None)).order_by(t.c.session_id, t.c.id)
        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
            rows: list[dict[str, Any]] = []
            for row in result.mappings():
                if rows and row["session_id"] != rows[0]["session_id"]:
                    yield rows
                    rows = []
                rows.append(dict(row))
            if rows:
                yield rows

    async def sessions(self) -> AsyncIterator[SourceSession]:
        groups = self._grouped()
        try:
            while (rows := await self._call(next, groups, None)) is not None:
                yield self._session(rows)
        finally:
            await self._call(groups.close)

    def _session(self, rows: list[dict[str, Any]]) -> SourceSession:
        times = [t for t in (_seconds(r.get("created_at")) for r in rows) if t is not None]
        return decoded_session(
            SOURCE,
            self._table.name,
            str(rows[0]["session_id"]),
            [(row["id"], row["message"]) for row in rows],
            created_at=min(times, default=None),
            updated_at=max(times, default=None),
            fields={k: v for k, v in rows[0].items() if k not in COLUMNS},
        )

    def close(self) -> None:
        self._io.shutdown(wait=True)


def _seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return None


def _engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:") or not Path(database).is_file():
                raise SourceMissingError(f"no SQLite database file at {database!r}")
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, ValueError) as exc:
        raise SourceError(f"--url is not an SQLAlchemy database URL: {exc}") from None
    except NoSuchModuleError as exc:
        raise SourceError(f"no database driver for that URL: {exc}") from None


def _table(engine: sa.Engine, name: str) -> sa.Table:
    try:
        table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    except NoSuchTableError:
        raise SourceMissingError(f"no table {name!r} in that database") from None
    except OperationalError as exc:
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        raise SourceUnreachableError(f"cannot reach the database: {first}") from None
    if missing := COLUMNS - set(table.c.keys()):
        raise SourceMissingError(
            f"table {name!r} is not an SQLChatMessageHistory table "
            f"(no {', '.join(sorted(missing))})"
        )
    return table


@asynccontextmanager
async def open_history(url: str, table: str | None) -> AsyncIterator[SqlHistoryReader]:
    engine = _engine(url)
    try:
        found = await asyncio.to_thread(_table, engine, table or "message_store")
        reader = SqlHistoryReader(engine, found)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        engine.dispose()
