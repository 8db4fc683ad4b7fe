"""Thread records: who a thread belongs to, what it is called, when it last changed.

A turn's last checkpoint may carry `RECORD_METADATA` (tenant, visible thread id, owner, title,
message count, time). Every saver threadline opens upserts it into a records store of its own
in the same write as the checkpoint: created by a thread's first turn, owner and title never
changed by later turns, deleted with the thread. Records are listed newest first by
`(updated_at, thread_key)`, a keyset that stays stable while turns land between pages.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

RECORD_METADATA = "threadline_thread"
RECORD_COLUMNS = (
    "thread_key, tenant, thread_id, user_id, title, created_at, updated_at, message_count, metadata"
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
        self, thread_key: str, *, title: str | None, metadata: dict[str, Any] | None
    ) -> ThreadRecord | None:
        """Set what the client may change; None if the thread has no record."""
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


def patched(
    record: ThreadRecord, title: str | None, metadata: dict[str, Any] | None
) -> ThreadRecord:
    """`record` with what a client set (None leaves a field as it is)."""
    changes: dict[str, Any] = {"title": title} if title is not None else {}
    if metadata is not None:
        changes["metadata"] = metadata
    return dataclasses.replace(record, **changes)


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
