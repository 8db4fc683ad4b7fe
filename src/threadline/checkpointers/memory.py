"""`MemorySaver`: LangGraph's in-memory saver, keeping turn receipts beside the checkpoints."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.memory import InMemorySaver

from threadline.checkpointers.receipts import Receipt, live, receipts_in


class MemorySaver(InMemorySaver):
    """Receipts are recorded in the same synchronous step as the checkpoint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.receipts: dict[str, dict[str, Receipt]] = {}  # thread_id → name → receipt

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = super().put(config, checkpoint, metadata, new_versions)
        configurable = config["configurable"]
        found = receipts_in(metadata, configurable.get("checkpoint_ns", ""), checkpoint["id"])
        if found:
            thread = self.receipts.setdefault(str(configurable["thread_id"]), {})
            for name in [n for n, r in thread.items() if live(r) is None]:
                del thread[name]
            for receipt in found:
                thread.setdefault(receipt.name, receipt)
        return stored

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        self.receipts.pop(str(thread_id), None)

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        return live(self.receipts.get(str(thread_id), {}).get(name))
