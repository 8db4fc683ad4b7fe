"""`DynamoDBSaver`: threadline's checkpoint saver on one DynamoDB table.

Not a wrapper of langgraph-checkpoint-aws: a put here is one `TransactWriteItems` (the
checkpoint, its new channel values, its receipts and the thread record's upsert), stored
whole or not at all; every read is strongly consistent; values go through the deployment's
serializer, bound to their place; and it copies, prunes and deletes runs. `layout` says
how items lie, `codec` what they hold, `history` how delta channels are read and pruned,
`maintenance` how items go, `thread_records` and `bookkeeping` receipts and records.

boto3 blocks, so the sync API does the work and the async API runs it on a small pool of
worker threads; neither holds a lock, and any number of savers may share the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from threadline.checkpointers.delta import DEFAULT_HISTORY_CACHE_BYTES
from threadline.checkpointers.dynamodb.bookkeeping import (
    receipt_actions,
    upsert_actions,
)
from threadline.checkpointers.dynamodb.codec import (
    PAYLOAD,
    Codec,
    blob_keys,
    cid_of,
    ns_of,
)
from threadline.checkpointers.dynamodb.history import SharedHistories, delta_history
from threadline.checkpointers.dynamodb.layout import (
    CHECKPOINT,
    Item,
    S,
    checkpoint_sk,
    checkpoints_prefix,
    fit,
    thread_pk,
    writes_prefix,
)
from threadline.checkpointers.dynamodb.maintenance import ThreadMaintenance
from threadline.checkpointers.dynamodb.table import Action, Table, dynamodb_client
from threadline.checkpointers.dynamodb.thread_records import TableRecords
from threadline.checkpointers.receipts import receipts_in
from threadline.checkpointers.records import record_in
from threadline.checkpointers.rows import SaverCall, checkpoint_config, next_version
from threadline.checkpointers.serde import metadata_matches

T = TypeVar("T")
DEFAULT_TABLE = "threadline"


class DynamoDBSaver(TableRecords, ThreadMaintenance, BaseCheckpointSaver[str]):
    """Checkpoints, receipts and thread records in one DynamoDB table."""

    def __init__(
        self,
        client: Any,
        table_name: str = DEFAULT_TABLE,
        *,
        serde: SerializerProtocol | None = None,
        max_workers: int = 8,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
    ) -> None:
        super().__init__(serde=serde)
        self.table = Table(client, table_name)
        self.codec = Codec(self.serde)
        self.histories = SharedHistories(history_cache_bytes)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="dynamodb")

    @classmethod
    @asynccontextmanager
    async def from_settings(
        cls,
        table_name: str = DEFAULT_TABLE,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        serde: SerializerProtocol | None = None,
        max_workers: int = 8,
        timeout_seconds: float = 10.0,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
        setup: bool = True,
    ) -> AsyncIterator[DynamoDBSaver]:
        """A ready saver on its own client (region and credentials from boto3's usual
        sources: environment, profile, instance role), closed on exit."""
        client = dynamodb_client(
            endpoint_url,
            region_name=region_name,
            max_workers=max_workers,
            timeout_seconds=timeout_seconds,
        )
        saver = cls(
            client,
            table_name,
            serde=serde,
            max_workers=max_workers,
            history_cache_bytes=history_cache_bytes,
        )
        try:
            if setup:
                await saver.setup()
            yield saver
        finally:
            saver.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def setup(self) -> None:
        """Create the table if it is missing (see `Table.create`)."""
        await self._run(self.table.create)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def get_next_version(self, current: str | None, channel: None) -> str:
        return next_version(current)

    # ----------------------------------------------------------------- writes

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self.table.commit(*self._put_parts(config, checkpoint, metadata, new_versions))
        return checkpoint_config(
            str(config["configurable"]["thread_id"]),
            config["configurable"].get("checkpoint_ns", ""),
            checkpoint["id"],
        )

    def _put_parts(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[list[Item], list[Action]]:
        """A checkpoint as items nothing refers to yet (chunks, new channel values) and the
        actions that commit it (the checkpoint, its receipts and thread record)."""
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        md = dict(get_serializable_checkpoint_metadata(config, metadata))
        item, blobs = self.codec.checkpoint_items(
            thread_id, ns, configurable.get("checkpoint_id"), checkpoint, md, new_versions
        )
        values = [fit(i, PAYLOAD) for i in blobs]
        fitted = fit(item, PAYLOAD)
        name = self.table.name
        actions = [Action({"Put": {"TableName": name, "Item": fitted.item}})]
        actions += receipt_actions(name, thread_id, receipts_in(md, ns, checkpoint["id"]))
        if record := record_in(md):
            actions += upsert_actions(name, record)
        # New channel values and chunks: nothing refers to them before the checkpoint does.
        first = [c for f in [*values, fitted] for c in f.chunks] + [f.item for f in values]
        return first, actions

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """A task's writes, together; a write already stored under its (task, idx) stays,
        unless every write is a special channel (errors, interrupts), which replace."""
        chunks, actions = self._writes_parts(config, writes, task_id, task_path)
        if self.table.fits(chunks, actions):
            self.table.commit(chunks, actions)
        else:  # a task with more writes than a transaction holds: stored in parts
            self.table.put_many(chunks)
            self.table.transact_in_parts(actions)

    def _writes_parts(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> tuple[list[Item], list[Action]]:
        configurable = config["configurable"]
        items = self.codec.write_items(
            str(configurable["thread_id"]),
            configurable.get("checkpoint_ns", ""),
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
        replace = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        fitted = [fit(i, PAYLOAD) for i in items]
        condition = {} if replace else {"ConditionExpression": "attribute_not_exists(sk)"}
        actions = [
            Action(
                {"Put": {"TableName": self.table.name, "Item": f.item, **condition}},
                optional=not replace,
            )
            for f in fitted
        ]
        return [c for f in fitted for c in f.chunks], actions

    def put_many(self, calls: Sequence[SaverCall]) -> None:
        """A turn's puts and writes in one transaction when DynamoDB's limits allow (and no
        item comes twice); otherwise one after another, in order."""
        first: list[Item] = []
        actions: list[Action] = []
        for method, args in calls:
            parts = self._put_parts(*args) if method == "aput" else self._writes_parts(*args)
            first += parts[0]
            actions += parts[1]
        keys = [_item_key(a) for a in actions]
        if len(set(keys)) == len(keys) and self.table.fits([], actions):
            self.table.commit(first, actions)
            return
        for method, args in calls:
            (self.put if method == "aput" else self.put_writes)(*args)

    # ------------------------------------------------------------------ reads

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        pk = thread_pk(str(configurable["thread_id"]))
        ns = configurable.get("checkpoint_ns", "")
        if checkpoint_id := get_checkpoint_id(config):
            item = self.table.get(pk, checkpoint_sk(ns, checkpoint_id))
        else:
            newest = self.table.query(pk, prefix=checkpoints_prefix(ns), forward=False, page_size=1)
            found = next(newest, None)
            item = self.table.whole(found) if found is not None else None
        return self._tuple(item) if item is not None else None

    def _tuple(self, item: Item) -> CheckpointTuple:
        """A whole checkpoint item with its channel values and pending writes."""
        writes = self.table.query(item["pk"]["S"], prefix=writes_prefix(ns_of(item), cid_of(item)))
        return self.codec.checkpoint_tuple(
            item,
            self.table.get_many(blob_keys(item)),
            [self.table.whole(w) for w in writes],
        )

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        before_id = get_checkpoint_id(before) if before else None
        emitted = 0
        for item in self._listed_items(config, before_id):
            if before_id is not None and cid_of(item) >= before_id:
                continue
            item = self.table.whole(item)
            if filter and not metadata_matches(self.codec.metadata(item), filter):
                continue
            if limit is not None and emitted >= limit:
                return
            yield self._tuple(item)
            emitted += 1

    def _listed_items(self, config: RunnableConfig | None, before_id: str | None) -> Iterator[Item]:
        """Checkpoint items newest first: of a namespace, of a thread, or of the table."""
        if config is None:
            found = self.table.scan("#kind = :c", {":c": S(CHECKPOINT)}, {"#kind": "kind"})
            yield from sorted(found, key=cid_of, reverse=True)
            return
        configurable = config["configurable"]
        pk = thread_pk(str(configurable["thread_id"]))
        if checkpoint_id := configurable.get("checkpoint_id"):
            item = self.table.get(
                pk, checkpoint_sk(configurable.get("checkpoint_ns", ""), checkpoint_id)
            )
            yield from [item] if item is not None else []
            return
        if (ns := configurable.get("checkpoint_ns")) is None:
            yield from sorted(
                self.table.query(pk, prefix=checkpoints_prefix()), key=cid_of, reverse=True
            )
            return
        if before_id is None:
            yield from self.table.query(pk, prefix=checkpoints_prefix(ns), forward=False)
        else:
            bounds = (checkpoints_prefix(ns), checkpoint_sk(ns, before_id))
            yield from self.table.query(pk, between=bounds, forward=False)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if not channels:
            return {}
        if checkpoint_id is None:
            latest = self.get_tuple(config)
            if latest is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = latest.checkpoint["id"]
        return delta_history(
            self.table, self.codec, thread_id, ns, checkpoint_id, channels, self.histories
        )

    # ------------------------------------------------------------ async twins

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = self.list(config, filter=filter, before=before, limit=limit)
        for tup in await self._run(lambda: [*found]):
            yield tup

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(self.put_writes, config, writes, task_id, task_path)

    async def aput_many(self, calls: Sequence[SaverCall]) -> None:
        """A turn's puts and writes, all or nothing (see `put_many`)."""
        await self._run(self.put_many, calls)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._run(self.get_delta_channel_history, config=config, channels=channels)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self.prune, thread_ids, strategy=strategy)

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        await self._run(self.delete_checkpoints, thread_key, keep=keep)


def _item_key(action: Action) -> tuple[str, str]:
    """The (pk, sk) an action writes: a transaction may touch an item once."""
    (inner,) = action.body.values()
    item = inner.get("Item") or inner["Key"]
    return item["pk"]["S"], item["sk"]["S"]
