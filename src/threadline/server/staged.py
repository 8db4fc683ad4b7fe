"""A saver that reads through to the real one and holds a turn's writes until the turn succeeded.

LangGraph saves a checkpoint at the end of a run even when a node raised, so a failed model call
would leave the human message in the thread without its reply. Running each turn against a
`StagedSaver` (with `durability="exit"`: one checkpoint per turn) and committing only after
success means a turn is either stored whole or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
)


class StagedSaver(BaseCheckpointSaver):
    """Async-only (the inherited sync methods raise): the server runs every turn on the loop."""

    def __init__(
        self,
        saver: BaseCheckpointSaver,
        *,
        on_no_checkpoint: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """`on_no_checkpoint(thread_key)` runs when the turn finds its thread empty; True means
        it stored a checkpoint meanwhile (a restored archive), which the turn then reads."""
        super().__init__(serde=saver.serde)
        self._saver = saver
        self._on_no_checkpoint = on_no_checkpoint
        self._staged: list[tuple[str, tuple[Any, ...]]] = []

    @property
    def config_specs(self) -> list[Any]:
        return self._saver.config_specs

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self._saver.get_next_version(current, channel)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = await self._saver.aget_tuple(config)
        configurable = config["configurable"]
        if (
            found is None
            and self._on_no_checkpoint is not None
            and not get_checkpoint_id(config)
            and not configurable.get("checkpoint_ns")
            and await self._on_no_checkpoint(str(configurable["thread_id"]))
        ):
            found = await self._saver.aget_tuple(config)
        return found

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._saver.aget_delta_channel_history(config=config, channels=channels)

    def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        return self._saver.alist(config, filter=filter, before=before, limit=limit)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._staged.append(("aput", (config, checkpoint, metadata, new_versions)))
        configurable = config["configurable"]
        return {
            "configurable": {
                "thread_id": configurable["thread_id"],
                "checkpoint_ns": configurable.get("checkpoint_ns", ""),
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._staged.append(("aput_writes", (config, writes, task_id, task_path)))

    async def commit(self, final_metadata: Mapping[str, Any] | None = None) -> None:
        """Write what the turn staged, in the order LangGraph produced it.

        `final_metadata` joins the metadata of the turn's last checkpoint, the one holding
        its result (used for the turn's receipts)."""
        staged, self._staged = self._staged, []
        last_put = max((i for i, (m, _) in enumerate(staged) if m == "aput"), default=None)
        if final_metadata and last_put is not None:
            config, checkpoint, metadata, versions = staged[last_put][1]
            metadata = {**metadata, **final_metadata}
            staged[last_put] = ("aput", (config, checkpoint, metadata, versions))
        for method, args in staged:
            await getattr(self._saver, method)(*args)
