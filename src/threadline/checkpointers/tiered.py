"""`TieredSaver`: Redis for the latest state of active threads, Postgres as the source of truth.

A write goes to Postgres and, staged, to Redis at the same time; it returns once Postgres has
it (a returned `aput` is durable) and Redis has the staged copy. The writer's next Redis call
on that thread commits the copy (or a timer, after `COMMIT_DELAY_SECONDS`); until then other
replicas read that thread from Postgres, so Redis never serves what Postgres may not hold.
Latest-state reads come from Redis in one round trip; on a miss from Postgres, which then
warms Redis. Older checkpoints, listings and history always come from Postgres. Each saver
keeps one extra Postgres connection to LISTEN for other replicas' invalidations.

Redis trouble never fails an operation. Each Redis call is bounded by a short timeout; a
failure opens a breaker for `redis_retry_seconds`, during which Redis is skipped. A Postgres
write whose Redis update failed or was skipped leaves Redis possibly stale for that
(thread, namespace). Such an entry is never served again:
- this process marks it suspect and reads it from Postgres until it has invalidated it in
  Redis (invalidation raises the entry's floor, so a delayed write cannot resurrect it);
- the mark is also journalled in Postgres (`threadline_hot_invalid`) and announced with
  NOTIFY, so other replicas stop serving it too, and any saver that starts, or recovers from
  a Redis error, reloads the journal before it touches Redis again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import psycopg
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
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from threadline.checkpointers.delta import stored_bytes_in_memory
from threadline.checkpointers.durable import (
    DEFAULT_HISTORY_CACHE_BYTES,
    CheckpointStoreUnavailable,
    DurablePostgresSaver,
)
from threadline.checkpointers.hot import HotHistory, HotTier, history_channels
from threadline.checkpointers.loopbridge import LoopBoundSyncMethods
from threadline.checkpointers.receipts import Receipt
from threadline.checkpointers.records import ThreadRecord
from threadline.checkpointers.rows import CheckpointRecord, Statement

logger = logging.getLogger(__name__)

JOURNAL_CHANNEL = "threadline_hot_invalid"
WHOLE_THREAD = "\x1f*"  # journal namespace meaning "every namespace of the thread"
ANY_CHECKPOINT = ""  # journal `below` meaning "whatever the entry holds"

# One random id per database, so that deployments sharing a Redis never share hot entries.
DEPLOYMENT_MIGRATIONS = (
    """CREATE TABLE IF NOT EXISTS threadline_deployment (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id TEXT NOT NULL
)""",
    "INSERT INTO threadline_deployment (id) VALUES (%s) ON CONFLICT DO NOTHING",
)
DEPLOYMENT_SELECT_SQL = "SELECT id FROM threadline_deployment"
DEFAULT_KEY_PREFIX = "threadline"

JOURNAL_MIGRATION = """
CREATE TABLE IF NOT EXISTS threadline_hot_invalid (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    below TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns)
)"""
JOURNAL_UPSERT_SQL = """
INSERT INTO threadline_hot_invalid (thread_id, checkpoint_ns, below) VALUES (%s, %s, %s)
ON CONFLICT (thread_id, checkpoint_ns) DO UPDATE SET below = CASE
    WHEN threadline_hot_invalid.below = '' OR EXCLUDED.below = '' THEN ''
    ELSE GREATEST(threadline_hot_invalid.below, EXCLUDED.below) END"""
JOURNAL_NOTIFY_SQL = f"SELECT pg_notify('{JOURNAL_CHANNEL}', %s)"
JOURNAL_SELECT_SQL = "SELECT thread_id, checkpoint_ns, below FROM threadline_hot_invalid"
JOURNAL_DELETE_SQL = """
DELETE FROM threadline_hot_invalid WHERE thread_id = %s AND checkpoint_ns = %s AND below = %s"""

REDIS_FAULTS = (RedisError, OSError, asyncio.TimeoutError)
# Retries of a Redis call whose deadline fired late because the event loop had stalled.
STALL_RETRIES = 2
# The Redis deadline grows by this many times the event loop's current lag.
LAG_ALLOWANCE = 3
LAG_PROBE_SECONDS = 0.02
# How long a staged change may wait for the writer's next call to carry its commit (other
# replicas read such an entry from Postgres meanwhile).
COMMIT_DELAY_SECONDS = 0.25
POSTGRES_FAULTS = (psycopg.Error, CheckpointStoreUnavailable)

Key = tuple[str, str]
T = TypeVar("T")


async def _migrate(durable: DurablePostgresSaver) -> None:
    await durable.setup()
    async with durable.cursor() as cur:
        await cur.execute(JOURNAL_MIGRATION)
        await cur.execute(DEPLOYMENT_MIGRATIONS[0])
        await cur.execute(DEPLOYMENT_MIGRATIONS[1], (os.urandom(6).hex(),))


async def deployment_key_prefix(durable: DurablePostgresSaver) -> str:
    """`threadline:<id>`, the id stored once per database at setup (or `threadline` for a
    database set up before there was one)."""
    try:
        async with durable.cursor() as cur:
            await cur.execute(DEPLOYMENT_SELECT_SQL)
            row = await cur.fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    return f"{DEFAULT_KEY_PREFIX}:{row['id']}" if row else DEFAULT_KEY_PREFIX


def _merge_below(old: str | None, new: str) -> str:
    if old is None:
        return new
    if ANY_CHECKPOINT in (old, new):
        return ANY_CHECKPOINT
    return max(old, new)


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
        self.redis_retry_seconds = redis_retry_seconds
        self._redis_retry_at = 0.0
        self._journal_stale = True
        self._suspects: dict[Key, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeping = False
        self._repairs: dict[Key, asyncio.Lock] = {}
        # Tokens of staged Redis changes whose Postgres write succeeded, not yet committed.
        self._uncommitted: dict[Key, list[str]] = {}
        self._commit_due: set[Key] = set()
        self._loop_lag = 0.0
        self._spawn(self._watch_loop_lag())

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
    ) -> AsyncIterator[TieredSaver]:
        """A ready saver owning its Postgres pool and Redis client for the context.

        Redis keys start with `key_prefix`, by default one derived from the database (see
        `deployment_key_prefix`), so deployments sharing a Redis stay apart.
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
                await _migrate(durable)
            hot = HotTier.from_url(
                redis_url,
                durable.serde,
                ttl_seconds=hot_ttl_seconds,
                timeout_seconds=redis_timeout_seconds,
                prefix=key_prefix or await deployment_key_prefix(durable),
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
        await _migrate(self.durable)

    async def _watch_loop_lag(self) -> None:
        """Track how late this event loop runs callbacks (a decaying peak)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            lag = loop.time() - started - LAG_PROBE_SECONDS
            self._loop_lag = max(lag, self._loop_lag * 0.9)

    def follow_journal(self, postgres_url: str) -> None:
        """Listen for other replicas' invalidations (NOTIFY) for as long as the saver lives."""
        self._spawn(self._listen(postgres_url))

    async def aclose(self) -> None:
        """Commit what is still staged (else other replicas read around it for a while)."""
        for key in list(self._uncommitted):
            await self._commit_now(key)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError, Exception):
                await task
        await self.hot.aclose()

    def get_next_version(self, current: str | None, channel: None) -> str:
        return self.durable.get_next_version(current, channel)

    # --------------------------------------------------------------- Redis health

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _redis_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._redis_retry_at:
            logger.warning(
                "Redis unavailable (%s); serving from Postgres for %.1fs",
                type(exc).__name__,
                self.redis_retry_seconds,
            )
        self._redis_retry_at = time.monotonic() + self.redis_retry_seconds
        self._journal_stale = True

    async def _hot_ready(self, thread_id: str, checkpoint_ns: str) -> bool:
        """Whether Redis may be used for this entry now (repairing it first if needed)."""
        if time.monotonic() < self._redis_retry_at:
            return False
        if self._journal_stale:
            try:
                await self._load_journal()
            except POSTGRES_FAULTS:
                return False
            if self._suspects and not self._sweeping:
                self._spawn(self._sweep())
        for key in ((thread_id, WHOLE_THREAD), (thread_id, checkpoint_ns)):
            if key in self._suspects and not await self._repair(key):
                return False
        return True

    async def _redis(self, make_call: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call under the Redis timeout, plus what the event loop is lagging.

        A busy loop delays replies that have long arrived, and a deadline that fires late
        means the loop stalled (a synchronous node, a slow import): neither is Redis being
        slow. When either shows at the deadline, the call is retried (every Redis call here
        is idempotent) rather than Redis declared down.
        """
        loop = asyncio.get_running_loop()
        for _ in range(STALL_RETRIES + 1):
            budget = self._redis_budget()
            started = loop.time()
            try:
                async with asyncio.timeout(budget):
                    return await make_call()
            except TimeoutError:
                elapsed = loop.time() - started
                if elapsed < budget * 1.5 and self._redis_budget() <= budget:
                    break
        raise RedisTimeoutError(f"no answer from Redis within {budget:g}s")

    def _redis_budget(self) -> float:
        return self.hot.timeout_seconds + LAG_ALLOWANCE * self._loop_lag

    # ------------------------------------------------------ suspects and journal

    def _suspect(self, key: Key, below: str) -> None:
        self._suspects[key] = _merge_below(self._suspects.get(key), below)

    def _journal_statements(self, key: Key, below: str) -> list[Statement]:
        note = json.dumps({"t": key[0], "ns": key[1], "b": below})
        return [(JOURNAL_UPSERT_SQL, (*key, below)), (JOURNAL_NOTIFY_SQL, (note,))]

    async def _journal(self, key: Key, below: str) -> None:
        """Mark an entry suspect here and, durably, for every replica."""
        self._suspect(key, below)
        try:
            async with self.durable.cursor(pipeline=True) as cur:
                for sql, params in self._journal_statements(key, below):
                    await cur.execute(sql, params)
        except POSTGRES_FAULTS:
            logger.exception("could not journal a stale Redis entry; this process skips it")

    async def _load_journal(self) -> None:
        try:
            async with self.durable.cursor() as cur:
                await cur.execute(JOURNAL_SELECT_SQL)
                rows = await cur.fetchall()
        except psycopg.errors.UndefinedTable:
            rows = []  # set up without the journal: nothing was ever journalled
        for row in rows:
            self._suspect((row["thread_id"], row["checkpoint_ns"]), row["below"])
        self._journal_stale = False

    def _on_note(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            self._suspect((note["t"], note["ns"]), note["b"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed %s notification", JOURNAL_CHANNEL)

    async def _listen(self, url: str) -> None:
        """Follow other replicas' journal entries as they happen."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {JOURNAL_CHANNEL}")
                    await self._load_journal()
                    async for note in conn.notifies():
                        self._on_note(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; a dead listener only costs latency
                logger.warning("journal listener reconnecting after %s", type(exc).__name__)
                self._journal_stale = True
                await asyncio.sleep(1.0)

    async def _repair(self, key: Key) -> bool:
        """Invalidate a suspect entry in Redis, then clear its journal row (once at a time:
        a second invalidation after a re-warm would only cost a cold read)."""
        lock = self._repairs.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._suspects:
                return True
            repaired = await self._invalidate_suspect(key)
        if not lock.locked():
            self._repairs.pop(key, None)
        return repaired

    async def _invalidate_suspect(self, key: Key) -> bool:
        below = self._suspects[key]
        thread_id, checkpoint_ns = key
        try:
            if checkpoint_ns == WHOLE_THREAD:
                await self._redis(lambda: self.hot.invalidate_thread(thread_id))
            else:
                await self._redis(
                    lambda: self.hot.invalidate(thread_id, checkpoint_ns, below=below or None)
                )
        except REDIS_FAULTS as exc:
            self._redis_failed(exc)
            return False
        try:
            async with self.durable.cursor() as cur:
                await cur.execute(JOURNAL_DELETE_SQL, (*key, below))
        except POSTGRES_FAULTS:
            return False
        if self._suspects.get(key) == below:
            del self._suspects[key]
        return True

    async def _sweep(self) -> None:
        """After recovering, repair every known suspect, not only the ones being read."""
        self._sweeping = True
        try:
            for key in list(self._suspects):
                if time.monotonic() < self._redis_retry_at:
                    return
                if key in self._suspects:
                    await self._repair(key)
        finally:
            self._sweeping = False

    async def _invalidate(self, key: Key, *, reset_floor: bool) -> None:
        """Invalidate after a destructive Postgres change, or journal it for later."""
        thread_id, checkpoint_ns = key
        if await self._hot_ready(thread_id, checkpoint_ns):
            try:
                if checkpoint_ns == WHOLE_THREAD:
                    await self._redis(
                        lambda: self.hot.invalidate_thread(thread_id, reset_floor=reset_floor)
                    )
                else:
                    await self._redis(
                        lambda: self.hot.invalidate(
                            thread_id, checkpoint_ns, reset_floor=reset_floor
                        )
                    )
                return
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
        await self._journal(key, ANY_CHECKPOINT)

    # ---------------------------------------------------------------------- reads

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if get_checkpoint_id(config):
            return await self.durable.aget_tuple(config)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        key = (thread_id, checkpoint_ns)
        gen: str | None = None
        if await self._hot_ready(thread_id, checkpoint_ns):
            commits = self._uncommitted.pop(key, [])
            known = self.durable.delta_histories.newest(thread_id, checkpoint_ns)
            try:
                found = await self._redis(
                    lambda: self.hot.read(thread_id, checkpoint_ns, commits, known)
                )
            except REDIS_FAULTS as exc:
                self._keep_uncommitted(key, commits)
                self._redis_failed(exc)
            else:
                if found.record is not None:
                    self._remember_histories(found.record, found.histories)
                    return self.durable.to_tuple(found.record)
                if found.abandoned:
                    self._spawn(self._drop_abandoned(key))
                if not found.pending:
                    gen = found.gen
        record = await self.durable.fetch_record(thread_id, checkpoint_ns, None)
        if record is None:
            return None
        if gen is not None and record.skeleton.get("v", 0) >= 4:
            histories = await self._histories_to_warm(record)
            try:
                await self.hot.warm(record, gen, histories, through=self._redis)
            except REDIS_FAULTS as exc:
                self._redis_failed(exc)
        return self.durable.to_tuple(record)

    def _remember_histories(
        self, record: CheckpointRecord, histories: Mapping[str, HotHistory]
    ) -> None:
        """Cache the delta histories Redis sent with a checkpoint, so that reading its state
        (`aget_delta_channel_history`, next) needs no Postgres query."""
        cache = self.durable.delta_histories
        loads = self.serde.loads_typed
        thread_id, checkpoint_ns = record.thread_id, record.checkpoint_ns
        for channel, hot in histories.items():
            writes = [
                (task_id, ch, loads((type_tag, blob))) for task_id, ch, type_tag, blob in hot.writes
            ]
            history: DeltaChannelHistory
            weight: int | None = None
            if hot.since is None:
                history = {"writes": writes}
                if hot.seed is not None:
                    history["seed"] = loads(hot.seed)
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

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        return await self.durable.aget_thread_record(thread_key)

    async def alist_thread_records(
        self,
        tenant: str,
        user_id: str | None,
        limit: int,
        after: tuple[float, str] | None = None,
    ) -> list[ThreadRecord]:
        return await self.durable.alist_thread_records(tenant, user_id, limit, after)

    async def aupdate_thread_record(
        self, thread_key: str, *, title: str | None, metadata: dict[str, Any] | None
    ) -> ThreadRecord | None:
        return await self.durable.aupdate_thread_record(thread_key, title=title, metadata=metadata)

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
        await self._write(
            (prepared.thread_id, prepared.checkpoint_ns),
            prepared.checkpoint_id,
            lambda also: self.durable.write_checkpoint(prepared, also),
            lambda token, commits: self.hot.put(prepared, token, commits, through=self._redis),
        )
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
        await self._write(
            (prepared.thread_id, prepared.checkpoint_ns),
            prepared.checkpoint_id,
            lambda also: self.durable.write_writes(prepared, also),
            lambda token, commits: self._redis(
                lambda: self.hot.put_writes(prepared, token, commits)
            ),
        )

    async def _write(self, key: Key, checkpoint_id: str, durable: Any, hot: Any) -> None:
        """Postgres and a staged Redis copy at once; commit the copy only if Postgres has it.

        With Redis out, Postgres alone, journalling the entry as suspect in the same
        transaction.
        """
        if not await self._hot_ready(*key):
            await durable(self._journal_statements(key, checkpoint_id))
            self._suspect(key, checkpoint_id)
            return
        token = os.urandom(8).hex()
        commits = self._uncommitted.pop(key, [])
        staging = asyncio.ensure_future(hot(token, commits))
        try:
            await durable(())
        except BaseException:
            staging.cancel()  # if it got through, it stays pending: never served
            with suppress(asyncio.CancelledError, *REDIS_FAULTS):
                await staging
            self._keep_uncommitted(key, commits)
            self._spawn(self._invalidate_quietly(key, checkpoint_id))
            raise
        try:
            await staging
        except REDIS_FAULTS as exc:
            self._keep_uncommitted(key, commits)
            self._redis_failed(exc)
            await self._journal(key, checkpoint_id)
            return
        self._keep_uncommitted(key, [token])
        if key not in self._commit_due:
            self._commit_due.add(key)
            self._spawn(self._commit_soon(key))

    def _keep_uncommitted(self, key: Key, tokens: list[str]) -> None:
        if tokens:
            self._uncommitted.setdefault(key, []).extend(tokens)

    async def _commit_soon(self, key: Key) -> None:
        """Commit staged changes unless the writer's next call has carried them already."""
        await asyncio.sleep(COMMIT_DELAY_SECONDS)
        self._commit_due.discard(key)
        await self._commit_now(key)

    async def _commit_now(self, key: Key) -> None:
        tokens = self._uncommitted.pop(key, [])
        if not tokens or time.monotonic() < self._redis_retry_at:
            self._keep_uncommitted(key, tokens)
            return
        try:
            await self._redis(lambda: self.hot.commit(*key, tokens))
        except REDIS_FAULTS as exc:
            self._keep_uncommitted(key, tokens)
            self._redis_failed(exc)

    async def _invalidate_quietly(self, key: Key, below: str) -> None:
        try:
            await self._redis(lambda: self.hot.invalidate(*key, below=below))
        except REDIS_FAULTS as exc:
            self._redis_failed(exc)

    async def _drop_abandoned(self, key: Key) -> None:
        """A staged change nobody committed for minutes: its writer died; start afresh."""
        await self._invalidate_quietly(key, "")

    # ------------------------------------------------------------------ deletion

    async def adelete_thread(self, thread_id: str) -> None:
        await self.durable.adelete_thread(thread_id)
        await self._invalidate((str(thread_id), WHOLE_THREAD), reset_floor=False)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        for key in sorted(await self.durable.delete_runs(run_ids)):
            await self._invalidate(key, reset_floor=True)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.durable.acopy_thread(source_thread_id, target_thread_id)
        await self._invalidate((str(target_thread_id), WHOLE_THREAD), reset_floor=True)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self.durable.aprune(thread_ids, strategy=strategy)
        for thread_id in thread_ids:
            await self._invalidate((str(thread_id), WHOLE_THREAD), reset_floor=False)


__all__ = ["TieredSaver"]
