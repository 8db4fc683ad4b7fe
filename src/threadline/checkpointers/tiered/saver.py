"""`TieredSaver`: Redis for the latest state of active threads, Postgres as the source of truth.

A write goes to Postgres and, staged, to Redis at the same time; it returns once Postgres has
it (a returned `aput` is durable) and Redis has the staged copy, committed later
(`staged.StagedCommits`), so Redis never serves what Postgres may not hold. Latest-state reads
come from Redis in one round trip; on a miss from Postgres, which then warms Redis. Older
checkpoints, listings and history always come from Postgres.

Redis trouble never fails an operation: every Redis call goes through `guard.RedisGuard` (a
deadline and a breaker), and an entry that may be stale after a failure is journalled
(`journal.InvalidationJournal`) and never served until repaired.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

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
from langgraph.checkpoint.serde.base import SerializerProtocol

from threadline.checkpointers.delta import stored_bytes_in_memory
from threadline.checkpointers.durable import DEFAULT_HISTORY_CACHE_BYTES, DurablePostgresSaver
from threadline.checkpointers.hot import HotHistory, HotTier, history_channels
from threadline.checkpointers.loopbridge import LoopBoundSyncMethods
from threadline.checkpointers.receipts import Receipt
from threadline.checkpointers.records import RecordQuery, ThreadRecord
from threadline.checkpointers.redis_clients import DEFAULT_POOL_SIZE, ClusterMode, is_cluster
from threadline.checkpointers.rows import (
    CheckpointRecord,
    PreparedCheckpoint,
    PreparedWrites,
    SaverCall,
    Statement,
)
from threadline.checkpointers.serde import loads_at
from threadline.checkpointers.tiered.guard import REDIS_FAULTS, RedisGuard
from threadline.checkpointers.tiered.journal import (
    ANY_CHECKPOINT,
    WHOLE_THREAD,
    InvalidationJournal,
    Key,
)
from threadline.checkpointers.tiered.schema import deployment_key_prefix, migrate
from threadline.checkpointers.tiered.staged import StagedCommits
from threadline.checkpointers.tiered.tasks import BackgroundTasks
from threadline.observability.metrics import HOT_READS, timed_op


@dataclass
class TierWrite:
    """Checkpoints and pending writes of one entry, stored as one: one Postgres transaction,
    and one Redis round trip staging them all under one token."""

    saver: TieredSaver
    prepared: list[PreparedCheckpoint | PreparedWrites]

    @property
    def key(self) -> Key:
        return (self.prepared[0].thread_id, self.prepared[0].checkpoint_ns)

    @property
    def checkpoint_id(self) -> str:
        return max(one.checkpoint_id for one in self.prepared)  # ids sort by time

    async def store(self, also: Sequence[Statement]) -> None:
        """Write to Postgres, with `also` statements in the same transaction."""
        await self.saver.durable.write_prepared(self.prepared, also)

    async def stage(self, token: str, commits: Sequence[str]) -> None:
        """Stage the Redis copy under `token`, carrying the `commits` of earlier writes."""
        hot, through = self.saver.hot, self.saver.guard.call
        await hot.put_many(self.prepared, token, commits, through=through)


T = TypeVar("T")


async def _timed(operation: Awaitable[T], tier: str, op: str) -> T:
    with timed_op("tiered", tier, op):
        return await operation


class TieredSaver(LoopBoundSyncMethods, BaseCheckpointSaver[str]):
    """Checkpoint saver with a Redis hot tier in front of a lock-free Postgres saver."""

    def __init__(
        self,
        durable: DurablePostgresSaver,
        hot: HotTier,
        *,
        redis_retry_seconds: float = 1.0,
    ) -> None:
        super().__init__(serde=durable.serde)
        self.durable = durable
        self.hot = hot
        self.loop = asyncio.get_running_loop()
        self.journal = InvalidationJournal(durable, self._invalidate_in_redis)
        self.guard = RedisGuard(
            hot.timeout_seconds, redis_retry_seconds, self._redis_down, max_in_flight=hot.pool_size
        )
        self.staged = StagedCommits(self._commit_in_redis)
        self._tasks = BackgroundTasks()  # invalidations that nobody waits for

    @classmethod
    @asynccontextmanager
    async def from_conn_string(
        cls,
        postgres_url: str,
        redis_url: str,
        *,
        serde: SerializerProtocol | None = None,
        pool_size: int = 10,
        pool_timeout_seconds: float = 10.0,
        hot_ttl_seconds: float = 3600,
        redis_timeout_seconds: float = 0.1,
        redis_retry_seconds: float = 1.0,
        key_prefix: str | None = None,
        history_cache_bytes: int = DEFAULT_HISTORY_CACHE_BYTES,
        setup: bool = True,
        redis_cluster: ClusterMode = "auto",
        redis_pool_size: int = DEFAULT_POOL_SIZE,
    ) -> AsyncIterator[TieredSaver]:
        """A ready saver owning its Postgres pool and Redis client for the context.

        Redis keys start with `key_prefix`, by default one derived from the database (see
        `schema.deployment_key_prefix`), so deployments sharing a Redis stay apart. One extra
        Postgres connection LISTENs for other replicas' invalidations.
        """
        async with DurablePostgresSaver.from_conn_string(
            postgres_url,
            pool_size=pool_size,
            pool_timeout_seconds=pool_timeout_seconds,
            serde=serde,
            history_cache_bytes=history_cache_bytes,
            setup=False,
        ) as durable:
            if setup:
                await migrate(durable)
            hot = HotTier.from_url(
                redis_url,
                durable.serde,
                ttl_seconds=hot_ttl_seconds,
                timeout_seconds=redis_timeout_seconds,
                prefix=key_prefix or await deployment_key_prefix(durable),
                cluster=await is_cluster(redis_url, redis_cluster),
                pool_size=redis_pool_size,
            )
            saver = cls(durable, hot, redis_retry_seconds=redis_retry_seconds)
            try:
                saver.follow_journal(postgres_url)
                yield saver
            finally:
                await saver.aclose()

    async def setup(self) -> None:
        """Stock checkpoint tables and migrations, the invalidation journal and the
        deployment id."""
        await migrate(self.durable)

    def follow_journal(self, postgres_url: str) -> None:
        """Listen for other replicas' invalidations (NOTIFY) for as long as the saver lives."""
        self.journal.follow(postgres_url)

    async def aclose(self) -> None:
        await self.staged.aclose()
        for owner in (self._tasks, self.journal, self.guard):
            await owner.aclose()
        await self.hot.aclose()

    def get_next_version(self, current: str | None, channel: None) -> str:
        return self.durable.get_next_version(current, channel)

    # ------------------------------------------------------------ Redis, guarded

    def _redis_down(self) -> None:
        self.journal.stale = True  # reload it before Redis is used again

    async def _hot_ready(self, key: Key) -> bool:
        """Whether Redis may be used for this entry now (repairing it first if needed)."""
        return self.guard.available and await self.journal.ready(key, lambda: self.guard.available)

    async def _invalidate_in_redis(self, key: Key, below: str) -> bool:
        thread_id, checkpoint_ns = key
        try:
            if checkpoint_ns == WHOLE_THREAD:
                await self.guard.call(lambda: self.hot.invalidate_thread(thread_id))
            else:
                await self.guard.call(
                    lambda: self.hot.invalidate(thread_id, checkpoint_ns, below=below or None)
                )
        except REDIS_FAULTS as exc:
            self.guard.failed(exc)
            return False
        return True

    async def _commit_in_redis(self, staged: Mapping[Key, Sequence[str]]) -> bool:
        if not self.guard.available:
            return False
        try:
            await self.guard.call(lambda: self.hot.commit(staged))
        except REDIS_FAULTS as exc:
            self.guard.failed(exc)
            return False
        return True

    async def _invalidate_quietly(self, key: Key, below: str) -> None:
        try:
            await self.guard.call(lambda: self.hot.invalidate(*key, below=below))
        except REDIS_FAULTS as exc:
            self.guard.failed(exc)

    async def _invalidate_after_change(self, key: Key, *, reset_floor: bool) -> None:
        """Invalidate after a destructive Postgres change, or journal it for later."""
        thread_id, checkpoint_ns = key
        if await self._hot_ready(key):
            try:
                if checkpoint_ns == WHOLE_THREAD:
                    await self.guard.call(
                        lambda: self.hot.invalidate_thread(thread_id, reset_floor=reset_floor)
                    )
                else:
                    await self.guard.call(
                        lambda: self.hot.invalidate(
                            thread_id, checkpoint_ns, reset_floor=reset_floor
                        )
                    )
                return
            except REDIS_FAULTS as exc:
                self.guard.failed(exc)
        await self.journal.record(key, ANY_CHECKPOINT)

    # ---------------------------------------------------------------------- reads

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if get_checkpoint_id(config):
            return await self.durable.aget_tuple(config)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        key = (thread_id, checkpoint_ns)
        gen: str | None = None
        result = "fallback"  # Redis unavailable, unless it answers below
        if await self._hot_ready(key):
            commits = self.staged.take(key)
            known = self.durable.delta_histories.newest(thread_id, checkpoint_ns)
            try:
                with timed_op("tiered", "hot", "get"):
                    found = await self.guard.call(
                        lambda: self.hot.read(thread_id, checkpoint_ns, commits, known)
                    )
            except REDIS_FAULTS as exc:
                self.staged.keep(key, commits)
                self.guard.failed(exc)
            else:
                if found.record is not None:
                    HOT_READS.labels(result="hit").inc()
                    self._remember_histories(found.record, found.histories)
                    return self.durable.to_tuple(found.record)
                result = "miss"
                if found.abandoned:  # its writer died: start afresh
                    self._tasks.spawn(self._invalidate_quietly(key, ANY_CHECKPOINT))
                if not found.pending:
                    gen = found.gen
        HOT_READS.labels(result=result).inc()
        with timed_op("tiered", "durable", "get"):
            record = await self.durable.fetch_record(thread_id, checkpoint_ns, None)
        if record is None:
            return None
        if gen is not None and record.skeleton.get("v", 0) >= 4:
            histories = await self._histories_to_warm(record)
            try:
                await self.hot.warm(record, gen, histories, through=self.guard.call)
            except REDIS_FAULTS as exc:
                self.guard.failed(exc)
        return self.durable.to_tuple(record)

    def _remember_histories(
        self, record: CheckpointRecord, histories: Mapping[str, HotHistory]
    ) -> None:
        """Cache the delta histories Redis sent with a checkpoint, so that reading its state
        (`aget_delta_channel_history`, next) needs no Postgres query."""
        cache = self.durable.delta_histories
        thread_id, checkpoint_ns = record.thread_id, record.checkpoint_ns
        for channel, hot in histories.items():
            writes = [
                (task_id, ch, loads_at(self.serde, (type_tag, blob), place))
                for (task_id, ch, type_tag, blob), place in zip(
                    hot.writes, hot.write_places, strict=True
                )
            ]
            history: DeltaChannelHistory
            weight: int | None = None
            if hot.since is None:
                history = {"writes": writes}
                if hot.seed is not None:
                    history["seed"] = loads_at(self.serde, hot.seed, hot.seed_place)
            else:
                base_key = (thread_id, checkpoint_ns, hot.since, channel)
                base = cache.get(base_key)
                if base is None:
                    continue  # evicted meanwhile: Postgres answers instead
                history = {**base, "writes": [*base["writes"], *writes]}
                if (base_weight := cache.weight_of(base_key)) is not None:
                    weight = base_weight + sum(stored_bytes_in_memory(w[3]) for w in hot.writes)
            cache.put((thread_id, checkpoint_ns, record.checkpoint_id, channel), history, weight)
            if hot.since not in (None, record.checkpoint_id):
                cache.discard((thread_id, checkpoint_ns, hot.since, channel))

    async def _histories_to_warm(
        self, record: CheckpointRecord
    ) -> Mapping[str, DeltaChannelHistory]:
        """The delta histories a checkpoint read from Postgres needs, to warm Redis with.

        Its state is about to be read, which needs them anyway: they are cached for that."""
        channels = history_channels(
            record.metadata, {**record.skeleton["channel_values"], **record.blobs}
        )
        if not channels:
            return {}
        config: RunnableConfig = {
            "configurable": {
                "thread_id": record.thread_id,
                "checkpoint_ns": record.checkpoint_ns,
                "checkpoint_id": record.checkpoint_id,
            }
        }
        return await self.durable.aget_delta_channel_history(config=config, channels=channels)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        async for found in self.durable.alist(config, filter=filter, before=before, limit=limit):
            yield found

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        return await self.durable.aget_receipt(thread_id, name)

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self.durable.take_written_record(thread_key)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        return await self.durable.aget_thread_record(thread_key)

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        return await self.durable.alist_thread_records(query)

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        return await self.durable.aupdate_thread_record(thread_key, changes, expect=expect)

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        return await self.durable.alist_expired_records(now, default_ttl, limit)

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        await self.durable.adelete_checkpoints(thread_key, keep=keep)
        await self._invalidate_after_change((thread_key, WHOLE_THREAD), reset_floor=False)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self.durable.aget_delta_channel_history(config=config, channels=channels)

    # --------------------------------------------------------------------- writes

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        prepared = self.durable.prepare_put(config, checkpoint, metadata, new_versions)
        await self._write(TierWrite(self, [prepared]))
        await self.durable.settle_snapshots(prepared)
        return prepared.next_config

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        prepared = self.durable.prepare_writes(config, writes, task_id, task_path)
        await self._write(TierWrite(self, [prepared]))

    async def aput_many(self, calls: Sequence[SaverCall]) -> None:
        """A turn's puts and writes, in order, all or nothing: one Postgres transaction and
        one Redis round trip (instead of one of each per call)."""
        prepared = [self.durable.prepare_call(call) for call in calls]
        if not prepared:
            return
        newest: dict[Key, str] = {}
        for one in prepared:
            key = (one.thread_id, one.checkpoint_ns)
            newest[key] = max(newest.get(key, ""), one.checkpoint_id)
        if len(newest) == 1:
            await self._write(TierWrite(self, prepared))
        else:  # several entries (subgraphs): Postgres alone, each entry repaired before reuse
            also = [
                statement
                for key, checkpoint_id in newest.items()
                for statement in self.journal.statements(key, checkpoint_id)
            ]
            await self.durable.write_prepared(prepared, also)
            for key, checkpoint_id in newest.items():
                self.journal.suspect(key, checkpoint_id)
        for one in prepared:
            if isinstance(one, PreparedCheckpoint):
                await self.durable.settle_snapshots(one)

    async def _write(self, write: TierWrite) -> None:
        """Postgres and a staged Redis copy at once; commit the copy only if Postgres has it.

        With Redis out, Postgres alone, journalling the entry as suspect in the same
        transaction.
        """
        key = write.key
        if not await self._hot_ready(key):
            await write.store(self.journal.statements(key, write.checkpoint_id))
            self.journal.suspect(key, write.checkpoint_id)
            return
        token = os.urandom(8).hex()
        commits = self.staged.take(key)
        staging = asyncio.ensure_future(_timed(write.stage(token, commits), "hot", "put"))
        try:
            await _timed(write.store(()), "durable", "put")
        except BaseException:
            staging.cancel()  # if it got through, it stays pending: never served
            with suppress(asyncio.CancelledError, *REDIS_FAULTS):
                await staging
            self.staged.keep(key, commits)
            self._tasks.spawn(self._invalidate_quietly(key, write.checkpoint_id))
            raise
        try:
            await staging
        except REDIS_FAULTS as exc:
            self.staged.keep(key, commits)
            self.guard.failed(exc)
            await self.journal.record(key, write.checkpoint_id)
            return
        self.staged.durable(key, token)

    # ------------------------------------------------------------------ deletion

    async def adelete_thread(self, thread_id: str) -> None:
        await self.durable.adelete_thread(thread_id)
        await self._invalidate_after_change((str(thread_id), WHOLE_THREAD), reset_floor=False)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for key in sorted(await self.durable.delete_runs(run_ids)):
            await self._invalidate_after_change(key, reset_floor=True)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.durable.acopy_thread(source_thread_id, target_thread_id)
        await self._invalidate_after_change((str(target_thread_id), WHOLE_THREAD), reset_floor=True)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self.durable.aprune(thread_ids, strategy=strategy)
        for thread_id in thread_ids:
            await self._invalidate_after_change((str(thread_id), WHOLE_THREAD), reset_floor=False)
