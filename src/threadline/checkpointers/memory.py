"""`MemorySaver`: LangGraph's in-memory saver, with turn receipts and thread records beside it."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver

from threadline.checkpointers.receipts import Receipt, live, receipts_in
from threadline.checkpointers.records import (
    RecordQuery,
    ThreadRecord,
    WrittenRecords,
    listed,
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
        self, thread_key: str, *, title: str | None, metadata: dict[str, Any] | None
    ) -> ThreadRecord | None:
        if (record := self.records.get(thread_key)) is None:
            return None
        self.records[thread_key] = patched(record, title, metadata)
        return self.records[thread_key]
