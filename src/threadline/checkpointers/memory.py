"""`MemorySaver`: LangGraph's in-memory saver, with turn receipts and thread records beside it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver

from threadline.checkpointers.receipts import Receipt, live, receipts_in
from threadline.checkpointers.records import (
    RecordQuery,
    ThreadRecord,
    WrittenRecords,
    expired_in,
    listed,
    matches,
    merged,
    patched,
    record_in,
)


class MemorySaver(InMemorySaver):
    """Receipts and records change in the same synchronous step as the checkpoint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.receipts: dict[str, dict[str, Receipt]] = {}  # thread_id → name → receipt
        self.records: dict[str, ThreadRecord] = {}  # thread_id → record
        self.written_records = WrittenRecords()

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = super().put(config, checkpoint, metadata, new_versions)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        if found := receipts_in(metadata, configurable.get("checkpoint_ns", ""), checkpoint["id"]):
            thread = self.receipts.setdefault(thread_id, {})
            for name in [n for n, r in thread.items() if live(r) is None]:
                del thread[name]
            for receipt in found:
                thread.setdefault(receipt.name, receipt)
        if record := record_in(metadata):
            self.records[thread_id] = merged(self.records.get(thread_id), record)
            self.written_records.put(self.records[thread_id])
        return stored

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        self.receipts.pop(str(thread_id), None)
        self.records.pop(str(thread_id), None)

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        return live(self.receipts.get(str(thread_id), {}).get(name))

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self.written_records.take(thread_key)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        return self.records.get(thread_key)

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        return listed(list(self.records.values()), query)

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        record = self.records.get(thread_key)
        if record is None or not matches(record, expect):
            return None
        self.records[thread_key] = patched(record, changes)
        return self.records[thread_key]

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        return expired_in(list(self.records.values()), now, default_ttl, limit)

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        kept_versions: set[tuple[Any, ...]] = set()
        for ns, checkpoints in self.storage.get(thread_key, {}).items():
            for checkpoint_id in [c for c in checkpoints if c != keep]:
                del checkpoints[checkpoint_id]
            for checkpoint_id, (checkpoint, metadata, _) in list(checkpoints.items()):
                checkpoints[checkpoint_id] = (checkpoint, metadata, None)
                versions = self.serde.loads_typed(checkpoint)["channel_versions"]
                kept_versions |= {(ns, channel, v) for channel, v in versions.items()}
        for written in [k for k in self.writes if k[0] == thread_key and k[2] != keep]:
            del self.writes[written]
        for blob in [k for k in self.blobs if k[0] == thread_key and k[1:] not in kept_versions]:
            del self.blobs[blob]
        self.receipts.pop(thread_key, None)
