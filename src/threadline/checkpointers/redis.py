"""`RedisSaver`: the stock async Redis saver, keeping turn receipts beside the checkpoints.

A thread's receipts are the fields of one hash, each expiring on its own (`HEXPIREAT`, Redis
7.4). The stock `aput` is itself several commands, not one transaction, so receipts are
written right after it: a receipt never names a checkpoint that was not stored; a process
that dies between the two leaves a stored turn without receipt (a retry carrying a message
id is still recognised by that id in the thread).
"""

from __future__ import annotations

import json
import time

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from threadline.checkpointers.receipts import Receipt, live, receipts_in


def receipts_key(thread_id: str) -> str:
    """One hash per thread, in the thread's cluster slot."""
    return f"threadline:receipts:{{{thread_id}}}"


class RedisSaver(AsyncRedisSaver):
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
        if found:
            key = receipts_key(str(configurable["thread_id"]))
            async with self._redis.pipeline(transaction=True) as pipe:
                for r in found:
                    value = json.dumps([r.digest, r.checkpoint_ns, r.checkpoint_id, r.expires_at])
                    pipe.hsetnx(key, r.name, value)
                    pipe.hexpireat(key, int(r.expires_at) + 1, r.name, nx=True)
                await pipe.execute()
        return stored

    async def aget_receipt(self, thread_id: str, name: str) -> Receipt | None:
        value = await self._redis.hget(receipts_key(str(thread_id)), name)
        if value is None:
            return None
        digest, checkpoint_ns, checkpoint_id, expires_at = json.loads(value)
        return live(Receipt(name, digest, checkpoint_ns, checkpoint_id, expires_at), time.time())

    async def adelete_thread(self, thread_id: str) -> None:
        await super().adelete_thread(thread_id)
        await self._redis.delete(receipts_key(str(thread_id)))
