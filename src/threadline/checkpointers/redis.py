"""`RedisSaver`: the stock async Redis saver, with turn receipts and thread records beside it.

A thread's receipts are the fields of one hash, each expiring on its own (`HEXPIREAT`, Redis
7.4). A thread's record is one JSON string, listed through sorted sets (one per tenant, one per
tenant and user) whose members sort newest first by byte order, so a page is one
`ZRANGEBYLEX` from the cursor. Live threads not on hold are also in one of two sorted sets for
the retention sweep: by `updated_at` (the deployment's TTL) or by expiry (a TTL of their own).
The stock `aput` is itself several commands, not one transaction, so receipts and record are
written in one transaction right after it: neither ever names a checkpoint that was not
stored; a process that dies between the two leaves a stored turn without them (a retry
carrying a message id is still recognised by that id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from threadline.checkpointers.receipts import Receipt, live, receipts_in
from threadline.checkpointers.records import (
    LIVE,
    RecordQuery,
    ThreadRecord,
    WrittenRecords,
    expired_in,
    matches,
    merged,
    patched,
    record_in,
)

NEWEST_FIRST_BASE = 10**17  # above any Unix time in microseconds
IDLE_INDEX = "threadline:retention:idle"  # live threads on the deployment TTL, by updated_at
EXPIRY_INDEX = "threadline:retention:expiry"  # live threads with a TTL of their own, by expiry


def receipts_key(thread_id: str) -> str:
    """One hash per thread, in the thread's cluster slot."""
    return f"threadline:receipts:{{{thread_id}}}"


def record_key(thread_key: str) -> str:
    return f"threadline:thread:{{{thread_key}}}"


def index_keys(record: ThreadRecord) -> list[str]:
    """The listings a record appears in ("/" is outside the tenant and user alphabets)."""
    keys = [f"threadline:threads/{record.tenant}"]
    if record.user_id is not None:
        keys.append(f"threadline:threads/{record.tenant}/{record.user_id}")
    return keys


def index_member(position: tuple[float, str]) -> str:
    updated_at, thread_key = position
    return f"{NEWEST_FIRST_BASE - round(updated_at * 1_000_000):017d}|{thread_key}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSaver(AsyncRedisSaver):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written_records = WrittenRecords()

    def take_written_record(self, thread_key: str) -> ThreadRecord | None:
        return self.written_records.take(thread_key)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        stream_mode: str = "values",
    ) -> RunnableConfig:
        stored = await super().aput(config, checkpoint, metadata, new_versions, stream_mode)
        configurable = config["configurable"]
        found = receipts_in(metadata, configurable.get("checkpoint_ns", ""), checkpoint["id"])
        record = record_in(metadata)
        old = await self.aget_thread_record(record.thread_key) if record else None
        if not found and record is None:
            return stored
        key = receipts_key(str(configurable["thread_id"]))
        async with self._redis.pipeline(transaction=True) as pipe:
            for r in found:
                value = json.dumps([r.digest, r.checkpoint_ns, r.checkpoint_id, r.expires_at])
                pipe.hsetnx(key, r.name, value)
                pipe.hexpireat(key, int(r.expires_at) + 1, r.name, nx=True)
            if record is not None:
                stored_record = merged(old, record)
                self._unlist(pipe, old)
                self._store_record(pipe, stored_record)
            await pipe.execute()
        if record is not None:
            self.written_records.put(stored_record)
        return stored

    @staticmethod
    def _store_record(pipe: Any, record: ThreadRecord) -> None:
        pipe.set(record_key(record.thread_key), record.to_json())
        for index in index_keys(record):
            pipe.zadd(index, {index_member(record.position): 0})
        if record.status == LIVE and not record.hold:
            if record.ttl_seconds is None:
                pipe.zadd(IDLE_INDEX, {record.thread_key: record.updated_at})
            else:
                pipe.zadd(EXPIRY_INDEX, {record.thread_key: record.updated_at + record.ttl_seconds})

    @staticmethod
    def _unlist(pipe: Any, record: ThreadRecord | None) -> None:
        if record is not None:
            for index in index_keys(record):
                pipe.zrem(index, index_member(record.position))
            pipe.zrem(IDLE_INDEX, record.thread_key)
            pipe.zrem(EXPIRY_INDEX, record.thread_key)

    async def aget_thread_record(self, thread_key: str) -> ThreadRecord | None:
        value = await self._redis.get(record_key(thread_key))
        return ThreadRecord.from_json(value) if value is not None else None

    async def alist_thread_records(self, query: RecordQuery) -> list[ThreadRecord]:
        probe = ThreadRecord("", query.tenant, "", query.user_id, "", 0, 0, 0)
        start = f"({index_member(query.after)}" if query.after is not None else "-"
        index = index_keys(probe)[-1]
        members = await self._redis.zrangebylex(index, start, "+", 0, query.limit)
        thread_keys = [
            (m.decode() if isinstance(m, bytes) else m).split("|", 1)[1] for m in members
        ]
        values = await self._redis.mget([record_key(k) for k in thread_keys]) if thread_keys else []
        return [ThreadRecord.from_json(v) for v in values if v is not None]

    async def aupdate_thread_record(
        self,
        thread_key: str,
        changes: Mapping[str, Any],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> ThreadRecord | None:
        """Not atomic with a concurrent turn's upsert: callers hold the thread's turn lock."""
        record = await self.aget_thread_record(thread_key)
        if record is None or not matches(record, expect):
            return None
        updated = patched(record, changes)
        async with self._redis.pipeline(transaction=True) as pipe:
            self._unlist(pipe, record)
            self._store_record(pipe, updated)
            await pipe.execute()
        return updated

    async def alist_expired_records(
        self, now: float, default_ttl: float | None, limit: int
    ) -> list[ThreadRecord]:
        keys: list[Any] = list(await self._redis.zrangebyscore(EXPIRY_INDEX, "-inf", now, 0, limit))
        if default_ttl is not None:
            idle = await self._redis.zrangebyscore(IDLE_INDEX, "-inf", now - default_ttl, 0, limit)
            keys += list(idle)
        values = await self._redis.mget([record_key(_text(k)) for k in keys]) if keys else []
        records = [ThreadRecord.from_json(v) for v in values if v is not None]
        return expired_in(records, now, default_ttl, limit)

    async def adelete_checkpoints(self, thread_key: str, *, keep: str | None = None) -> None:
        if keep is not None:
            raise NotImplementedError(
                "the redis backend cannot keep one checkpoint of a thread (keep_latest); "
                "use tiered or postgres"
            )
        await super().adelete_thread(thread_key)
        await self._redis.delete(receipts_key(thread_key))

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        value = await self._redis.hget(receipts_key(str(thread_id)), name)
        if value is None:
            return None
        digest, checkpoint_ns, checkpoint_id, expires_at = json.loads(value)
        return live(Receipt(name, digest, checkpoint_ns, checkpoint_id, expires_at), time.time())

    async def adelete_thread(self, thread_id: str) -> None:
        await super().adelete_thread(thread_id)
        record = await self.aget_thread_record(str(thread_id))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(receipts_key(str(thread_id)), record_key(str(thread_id)))
            self._unlist(pipe, record)
            await pipe.execute()
