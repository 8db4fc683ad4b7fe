"""Thread records: who a thread belongs to, what it is called, when it last changed, and how
long it is kept.

A turn's last checkpoint may carry `RECORD_METADATA` (tenant, visible thread id, owner, title,
message count, time). Every saver threadline opens upserts it into a records store of its own
in the same write as the checkpoint: created by a thread's first turn, owner, title and
retention never changed by later turns, deleted with the thread. Records are listed newest
first by `(updated_at, thread_key)`, a keyset that stays stable while turns land between pages.

Retention (`threadline.retention`) reads and changes the rest: a per-thread TTL, a legal hold,
whether the thread is live or archived, and when a sweep last handled it (`swept_at`: the
`updated_at` it saw, so an unchanged thread is not handled twice).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

RECORD_METADATA = "threadline_thread"
RECORD_COLUMNS = (
    "thread_key, tenant, thread_id, user_id, title, created_at, updated_at, message_count, "
    "metadata, ttl_seconds, hold, status, swept_at"
)
# What a turn's upsert writes (the rest keep their defaults).
INSERTED_RECORD_COLUMNS = (
    "thread_key, tenant, thread_id, user_id, title, created_at, updated_at, message_count, metadata"
)
LIVE = "live"
ARCHIVED = "archived"
# What may change after a thread's first turn (turns themselves only move `updated_at` and
# `message_count`, through the upsert).
MUTABLE_FIELDS = frozenset(
    {"title", "metadata", "ttl_seconds", "hold", "status", "swept_at", "updated_at"}
)


@dataclass(frozen=True)
class ThreadRecord:
    thread_key: str  # the checkpointer's thread_id (tenant-scoped)
    tenant: str  # "" in single-tenant mode
    thread_id: str  # what the client calls it
    user_id: str | None
    title: str
    created_at: float  # Unix seconds
    updated_at: float
    message_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    ttl_seconds: float | None = None  # idle time before expiry; None: the deployment's
    hold: bool = False  # legal hold: never expires, archives or is erased
    status: str = LIVE  # LIVE or ARCHIVED (the transcript is in the archive)
    swept_at: float | None = None  # the `updated_at` a sweep last handled

    def expires_at(self, default_ttl: float | None) -> float | None:
        """When the thread expires (None: never): idle `ttl` after its last turn."""
        ttl = self.ttl_seconds if self.ttl_seconds is not None else default_ttl
        if ttl is None or self.hold or self.status != LIVE:
            return None
        return self.updated_at + ttl

    def expired(self, now: float, default_ttl: float | None) -> bool:
        """Due for the sweep: past its expiry and not handled since its last turn."""
        at = self.expires_at(default_ttl)
        return at is not None and at <= now and (self.swept_at or 0) < self.updated_at

    @property
    def position(self) -> tuple[float, str]:
        """Where the record sorts in a listing (newest first)."""
        return (self.updated_at, self.thread_key)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ThreadRecord:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RecordQuery:
    """One page of a listing: `tenant`'s records (only `user_id`'s if given), newest first,
    at most `limit`, after the `position` of the previous page's last record."""

    tenant: str
    user_id: str | None = None
    limit: int = 20
    after: tuple[float, str] | None = None


@runtime_checkable
class KeepsThreadRecords(Protocol):
    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None: ...

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]: ...

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        """Set `changes` (names from `MUTABLE_FIELDS`) if the record's fields equal `expect`;
        the record as it is after, or None if there is none (or it did not match)."""
        ...

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        """Up to `limit` records `expired` at `now`, least recently updated first."""
        ...

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        """Delete the thread's checkpoints (with their writes, blobs and receipts) but the one
        whose id is `keep`, which loses its parent; the record stays."""
        ...

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        """The record as this process's last write of the thread left it, once (None if the
        store cannot tell without a read)."""
        ...


class WrittenRecords:
    """Records as a saver's own upserts left them, so a turn's response can carry its record
    without reading it back (bounded; each taken once)."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._records: OrderedDict[str, ThreadRecord] = OrderedDict()

    def put(self, record: ThreadRecord) -> None:
        self._records.pop(record.thread_key, None)
        self._records[record.thread_key] = record
        while len(self._records) > self._size:
            self._records.popitem(last=False)

    def take(self, thread_key: str) -> ThreadRecord | None:
        return self._records.pop(thread_key, None)


def record_metadata(record: ThreadRecord) -> dict[str, Any]:
    """The metadata entry that makes a checkpoint's saver upsert `record`."""
    return {RECORD_METADATA: asdict(record)}


def record_in(metadata: Mapping[str, Any]) -> ThreadRecord | None:
    """The record a checkpoint with `metadata` asks its saver to upsert."""
    entry = metadata.get(RECORD_METADATA)
    return ThreadRecord(**entry) if isinstance(entry, Mapping) else None


def merged(old: ThreadRecord | None, new: ThreadRecord) -> ThreadRecord:
    """What a turn's record upsert leaves: owner, title, creation and metadata stay."""
    if old is None:
        return new
    return ThreadRecord(
        **{
            **asdict(old),
            "updated_at": new.updated_at,
            "message_count": new.message_count,
        }
    )


def listed(records: list[ThreadRecord], query: RecordQuery) -> list[ThreadRecord]:
    """The page of `records` a listing returns (for stores without an index)."""
    chosen = [
        r
        for r in records
        if r.tenant == query.tenant
        and (query.user_id is None or r.user_id == query.user_id)
        and (query.after is None or r.position < query.after)
    ]
    return sorted(chosen, key=lambda r: r.position, reverse=True)[: query.limit]


def checked_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes`, if every name may change (a programming error otherwise)."""
    if unknown := set(changes) - MUTABLE_FIELDS:
        raise ValueError(f"record fields that cannot change: {sorted(unknown)}")
    return dict(changes)


def matches(record: ThreadRecord, expect: Mapping[str, Any] | None) -> bool:
    return all(getattr(record, name) == value for name, value in (expect or {}).items())


def patched(record: ThreadRecord, changes: Mapping[str, Any]) -> ThreadRecord:
    """`record` with `changes` set."""
    return dataclasses.replace(record, **checked_changes(changes))


def expired_in(
    records: list[ThreadRecord], now: float, default_ttl: float | None, limit: int
) -> list[ThreadRecord]:
    """The records due for a sweep (for stores without an index)."""
    due = [r for r in records if r.expired(now, default_ttl)]
    return sorted(due, key=lambda r: r.position)[:limit]


def update_sql(
    placeholder: str,
    thread_key: str,
    changes: Mapping[str, Any],
    expect: Mapping[str, Any] | None,
    encode: Callable[[str, Any], Any] = lambda name, value: value,
) -> tuple[str, list[Any]]:
    """One conditional UPDATE of a record, for SQL stores (RETURNING the record); `encode`
    turns a field's value into the store's (JSON for metadata, say)."""
    changes, expect = checked_changes(changes), checked_changes(expect or {})
    sets = ", ".join(f"{name} = {placeholder}" for name in changes) or "thread_key = thread_key"
    where = "".join(f" AND {name} = {placeholder}" for name in expect)
    sql = (
        f"UPDATE threadline_threads SET {sets} WHERE thread_key = {placeholder}{where} "
        f"RETURNING {RECORD_COLUMNS}"
    )
    values = [encode(n, v) for n, v in changes.items()]
    return sql, [*values, thread_key, *(encode(n, v) for n, v in expect.items())]


def expired_sql(placeholder: str) -> str:
    """The records due for a sweep, oldest first (params: default TTL, now, limit)."""
    return (
        f"SELECT {RECORD_COLUMNS} FROM threadline_threads "
        f"WHERE status = 'live' AND NOT hold "
        f"AND updated_at + coalesce(ttl_seconds, {placeholder}) <= {placeholder} "
        f"AND coalesce(swept_at, 0) < updated_at "
        f"ORDER BY updated_at, thread_key LIMIT {placeholder}"
    )


def listing_sql(placeholder: str, query: RecordQuery) -> tuple[str, list[Any]]:
    """The keyset query of one page of records, for SQL stores (`%s` or `?` placeholders)."""
    where = [f"tenant = {placeholder}"]
    params: list[Any] = [query.tenant]
    if query.user_id is not None:
        where.append(f"user_id = {placeholder}")
        params.append(query.user_id)
    if query.after is not None:
        where.append(f"(updated_at, thread_key) < ({placeholder}, {placeholder})")
        params.extend(query.after)
    sql = (
        f"SELECT {RECORD_COLUMNS} FROM threadline_threads WHERE {' AND '.join(where)} "
        f"ORDER BY updated_at DESC, thread_key DESC LIMIT {placeholder}"
    )
    return sql, [*params, query.limit]
