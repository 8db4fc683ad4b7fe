"""Turn receipts and thread records in Firestore: `KeepsReceipts` and the record side of
`KeepsThreadRecords`.

A thread's record lives in its thread document (`rec` true), its receipts in the thread's
receipts subcollection. Both are written by the checkpoint's own transaction (`decide`), so
they exist exactly when their turn does: the transaction reads the record and the receipts
of the turn's names, then writes the record as `records.merged` leaves it and each receipt
no live one of that name holds. Listings query a tenant's records by one equality filter
(`tenant`; Firestore's automatic single-field index) and page them here (`records.listed`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from google.cloud.firestore import AsyncTransaction, async_transactional
from google.cloud.firestore_v1.base_query import FieldFilter

from threadline.checkpointers.firestore.layout import RECEIPTS, Doc, enc, thread_doc_id
from threadline.checkpointers.firestore.store import Store, Write
from threadline.checkpointers.receipts import Receipt, live
from threadline.checkpointers.records import (
    LIVE,
    RecordQuery,
    ThreadRecord,
    WrittenRecords,
    checked_changes,
    expired_in,
    listed,
    matches,
    merged,
    patched,
)

RECORD_FIELDS = tuple(f.name for f in fields(ThreadRecord))


def record_doc(record: ThreadRecord) -> Doc:
    """The thread document's record fields (metadata as JSON: any keys, no field paths)."""
    doc = asdict(record)
    doc["metadata"] = json.dumps(record.metadata, sort_keys=True)
    return {**doc, "rec": True}


def record_from(doc: Mapping[str, Any]) -> ThreadRecord:
    values: dict[str, Any] = {name: doc.get(name) for name in RECORD_FIELDS}
    values["metadata"] = json.loads(doc.get("metadata") or "{}")
    return ThreadRecord(**values)


def encoded_changes(changes: Mapping[str, Any]) -> Doc:
    return {
        name: json.dumps(value, sort_keys=True) if name == "metadata" else value
        for name, value in checked_changes(changes).items()
    }


def receipt_doc(receipt: Receipt) -> Doc:
    return {
        "name": receipt.name,
        "digest": receipt.digest,
        "ns": receipt.checkpoint_ns,
        "cid": receipt.checkpoint_id,
        "expires_at": float(receipt.expires_at),
    }


def receipt_from(doc: Mapping[str, Any]) -> Receipt:
    return Receipt(
        name=str(doc["name"]),
        digest=str(doc["digest"]),
        checkpoint_ns=str(doc["ns"]),
        checkpoint_id=str(doc["cid"]),
        expires_at=float(doc["expires_at"]),
    )


async def bookkeeping(
    store: Store,
    transaction: AsyncTransaction,
    thread_id: str,
    receipts: Sequence[Receipt],
    record: ThreadRecord | None,
    written: WrittenRecords,
) -> list[Write]:
    """Inside a put's transaction: what to write for its receipts and record."""
    tdoc = thread_doc_id(thread_id)
    receipt_refs = [store.sub(tdoc, RECEIPTS).document(enc(r.name)) for r in receipts]
    thread_ref = store.thread(tdoc)
    refs = [*receipt_refs, *([thread_ref] if record is not None else [])]
    found = {
        snap.reference.path: snap.to_dict()
        async for snap in store.client.get_all(refs, transaction=transaction)
        if snap.exists
    }
    writes: list[Write] = []
    for ref, receipt in zip(receipt_refs, receipts, strict=True):
        old = found.get(ref.path)
        if old is None or live(receipt_from(old)) is None:
            writes.append((ref, receipt_doc(receipt)))
    if record is not None:
        stored = found.get(thread_ref.path)
        new = merged(record_from(stored) if stored and stored.get("rec") else None, record)
        writes.append((thread_ref, record_doc(new)))
        written.put(new)
    return writes


class FirestoreRecords:
    """Mixin of `FirestoreSaver`: receipts and records."""

    store: Store
    written_records: WrittenRecords

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        ref = self.store.sub(thread_doc_id(str(thread_id)), RECEIPTS).document(enc(name))
        doc = await self.store.get(ref)
        return live(receipt_from(doc)) if doc is not None else None

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self.written_records.take(thread_key)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        doc = await self.store.get(self.store.thread(thread_doc_id(thread_key)))
        return record_from(doc) if doc is not None and doc.get("rec") else None

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        """One tenant's records, filtered and ordered here (`listed`)."""
        found = self.store.threads().where(filter=FieldFilter("tenant", "==", query.tenant))
        records = [record_from(s.to_dict() or {}) async for s in found.stream()]
        return listed(records, query)

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        """A conditional update in a transaction: `expect` is checked against the record as
        the transaction reads it, so a record changed meanwhile is left alone."""
        encoded = encoded_changes(changes)
        checked_changes(expect or {})
        ref = self.store.thread(thread_doc_id(thread_key))

        @async_transactional
        async def update(transaction: AsyncTransaction) -> ThreadRecord | None:
            snap = await ref.get(transaction=transaction)
            doc = snap.to_dict() if snap.exists else None
            if doc is None or not doc.get("rec"):
                return None
            record = record_from(doc)
            if not matches(record, expect):
                return None
            if encoded:
                transaction.update(ref, encoded)
            return patched(record, changes)

        return await update(self.store.client.transaction())

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        """The live records (one equality query; a sweep's read, never a turn's), the
        expired ones chosen here."""
        found = self.store.threads().where(filter=FieldFilter("status", "==", LIVE))
        records = [record_from(s.to_dict() or {}) async for s in found.stream()]
        return expired_in(records, now, default_ttl, limit)
