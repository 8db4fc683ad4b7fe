"""Turn receipts and thread records read and changed (see `bookkeeping` for their items and
how a put writes them): `KeepsReceipts` and the record side of `KeepsThreadRecords`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from threadline.checkpointers.dynamodb.bookkeeping import (
    receipt_from,
    record_from,
    update_actions,
)
from threadline.checkpointers.dynamodb.layout import (
    RECORD,
    RECORD_SK,
    S,
    receipt_sk,
    tenant_pk,
    thread_pk,
)
from threadline.checkpointers.dynamodb.table import StoreError, Table
from threadline.checkpointers.receipts import Receipt, live
from threadline.checkpointers.records import (
    RecordQuery,
    ThreadRecord,
    expired_in,
    listed,
    matches,
)

T = TypeVar("T")


class TableRecords:
    """Mixin of `DynamoDBSaver`: receipts and records, sync and async."""

    table: Table

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise NotImplementedError

    def get_receipt(self, thread_id: str, name: str) -> Receipt | None:
        item = self.table.get(thread_pk(str(thread_id)), receipt_sk(name))
        return live(receipt_from(name, item)) if item is not None else None

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        """None: a put upserts the record without reading it back (callers read it)."""
        return None

    def get_thread_record(self, thread_key: str) -> ThreadRecord | None:
        item = self.table.get(thread_pk(thread_key), RECORD_SK)
        return record_from(item) if item is not None else None

    def list_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        """One tenant's records (one partition), filtered and ordered here (`listed`)."""
        items = self.table.query(tenant_pk(query.tenant))
        return listed([record_from(i) for i in items], query)

    def update_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        """A conditional update of both copies in one transaction (None if the record is
        missing or does not match `expect`, also when it changed since it was read)."""
        record = self.get_thread_record(thread_key)
        if record is None or not matches(record, expect):
            return None
        if not changes:
            return record
        try:
            self.table.transact(update_actions(self.table.name, record, changes, expect))
        except StoreError:
            return None
        return self.get_thread_record(thread_key)

    def list_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        """A scan of the canonical records: a sweep's read, never a turn's."""
        items = self.table.scan("#kind = :r", {":r": S(RECORD)}, {"#kind": "kind"})
        return expired_in([record_from(i) for i in items], now, default_ttl, limit)

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        return await self._run(self.get_receipt, thread_id, name)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        return await self._run(self.get_thread_record, thread_key)

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        return await self._run(self.list_thread_records, query)

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        return await self._run(self.update_thread_record, thread_key, changes, expect)

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        return await self._run(self.list_expired_records, now, default_ttl, limit)
