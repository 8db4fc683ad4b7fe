"""A saver that reads through to the real one and holds a turn's writes until the turn succeeded.

LangGraph saves a checkpoint at the end of a run even when a node raised, so a failed model call
would leave the human message in the thread without its reply. Running each turn against a
`StagedSaver` (with `durability="exit"`: one checkpoint per turn) and committing only after
success means a turn is either stored whole or not at all.

With a `Protector`, the commit is also where sensitive values leave a turn: every checkpoint,
write and the thread's record are protected on their way to the real saver, so no tier (nor
the archive, exports or hot copies made from them) ever receives a detected value in clear —
the turn's input checkpoint included, since nothing is written before the commit.
"""

from __future__ import annotations

from collections import Counter
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

from threadline.checkpointers.records import RECORD_METADATA
from threadline.checkpointers.sealed_records import RecordSealer
from threadline.observability.metrics import backend_of, timed_op
from threadline.privacy import Protector


class StagedSaver(BaseCheckpointSaver):
    """Async-only (the inherited sync methods raise): the server runs every turn on the loop."""

    def __init__(
        self,
        saver: BaseCheckpointSaver,
        *,
        on_no_checkpoint: Callable[[str], Awaitable[bool]] | None = None,
        protector: Protector | None = None,
    ) -> None:
        """`on_no_checkpoint(thread_key)` runs when the turn finds its thread empty; True means
        it stored a checkpoint meanwhile (a restored archive), which the turn then reads."""
        super().__init__(serde=saver.serde)
        self._saver = saver
        self._on_no_checkpoint = on_no_checkpoint
        self._protector = protector
        self._record_sealer = RecordSealer(saver.serde)
        self._backend = backend_of(saver)
        self._staged: list[tuple[str, tuple[Any, ...]]] = []

    @property
    def config_specs(self) -> list[Any]:
        return self._saver.config_specs

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self._saver.get_next_version(current, channel)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        with timed_op(self._backend, "all", "get"):
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

    async def commit(self, final_metadata: Mapping[str, Any] | None = None) -> Counter[str]:
        """Write what the turn staged, in the order LangGraph produced it; return what was
        protected, by entity (the counts also join the last checkpoint's telemetry).

        `final_metadata` joins the metadata of the turn's last checkpoint, the one holding
        its result (used for the turn's receipts and record)."""
        staged, self._staged = self._staged, []
        last_put = max((i for i, (m, _) in enumerate(staged) if m == "aput"), default=None)
        if final_metadata and last_put is not None:
            config, checkpoint, metadata, versions = staged[last_put][1]
            metadata = {**metadata, **final_metadata}
            staged[last_put] = ("aput", (config, checkpoint, metadata, versions))
        counts: Counter[str] = Counter()
        if self._protector is not None:
            staged = [self._protected(method, args, counts) for method, args in staged]
            if counts and last_put is not None:
                staged[last_put] = ("aput", _with_detections(staged[last_put][1], counts))
        if last_put is not None:  # protected first: the record is sealed as it will be read
            staged[last_put] = ("aput", self._with_sealed_record(staged[last_put][1]))
        with timed_op(self._backend, "all", "put"):
            if (put_many := getattr(self._saver, "aput_many", None)) is not None:
                await put_many(staged)  # one transaction: all or nothing
            else:
                for method, args in staged:
                    await getattr(self._saver, method)(*args)
        return counts

    def _with_sealed_record(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        config, checkpoint, metadata, versions = args
        if isinstance(record := metadata.get(RECORD_METADATA), Mapping):
            sealed = self._record_sealer.seal_fields(record, str(record["thread_key"]))
            metadata = {**metadata, RECORD_METADATA: sealed}
        return config, checkpoint, metadata, versions

    def _protected(
        self, method: str, args: tuple[Any, ...], counts: Counter[str]
    ) -> tuple[str, tuple[Any, ...]]:
        protector = self._protector
        assert protector is not None
        if method == "aput_writes":
            config, writes, task_id, task_path = args
            return method, (config, protector.writes(writes, counts), task_id, task_path)
        config, checkpoint, metadata, versions = args
        if isinstance(record := metadata.get(RECORD_METADATA), Mapping):
            metadata = {**metadata, RECORD_METADATA: protector.record(record, counts)}
        return method, (config, protector.checkpoint(checkpoint, counts), metadata, versions)


def _with_detections(args: tuple[Any, ...], counts: Counter[str]) -> tuple[Any, ...]:
    """The checkpoint with the turn's detection counts in its telemetry (no values)."""
    config, checkpoint, metadata, versions = args
    values = dict(checkpoint.get("channel_values") or {})
    if isinstance(telemetry := values.get("telemetry"), Mapping):
        values["telemetry"] = {**telemetry, "pii_detections": dict(counts)}
        checkpoint = {**checkpoint, "channel_values": values}
    return config, checkpoint, metadata, versions
