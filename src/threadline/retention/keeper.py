"""What retention does to one thread: expire it, cut it to its latest checkpoint, archive it,
restore it. Each step is ordered so that a process killed between any two leaves the thread
whole somewhere:

- archive: write the object, read it back and decode it, then mark the record archived (only
  if no turn changed the thread meanwhile), then delete the checkpoints. Killed before the
  mark, the thread is live and the object is overwritten next time; killed after it, the
  thread reads as archived and its leftover checkpoints go at restore or erasure.
- keep_latest: write the whole state as one new checkpoint (the transcript as a full
  snapshot, not deltas), then delete every other; killed between, the thread holds both.
- restore: delete leftovers, write the archived state as one checkpoint, mark the record
  live, then delete the object; killed before the mark, restoring again starts over.

Callers hold the thread's turn lock, so no turn runs on a thread while it is handled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Overwrite

from threadline.audit import AuditLog
from threadline.checkpointers.records import ARCHIVED, LIVE, KeepsThreadRecords, ThreadRecord
from threadline.checkpointers.sealed_records import SealedRecords
from threadline.observability.metrics import RETENTION
from threadline.retention.archive import ArchivedThread, ArchiveError, ArchiveStore, object_name

TtlStrategy = Literal["delete", "keep_latest", "archive"]
# The node a restored or compacted state is written as: the turn's last step, so the thread
# has nothing left to run and the next turn starts from its input.
LAST_NODE = "model"


class NotArchivedError(Exception):
    """Restore was asked of a thread that is live."""


class NoArchiveError(Exception):
    """The thread is archived, but no archive store is configured or its object is missing."""


def _config(thread_key: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_key}}


@dataclass
class ThreadKeeper:
    """Retention's operations on a graph compiled with the deployment's saver."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    archive: ArchiveStore | None
    audit: AuditLog
    clock: Callable[[], float] = field(default=time.time)

    @property
    def records(self) -> KeepsThreadRecords:
        """The saver's thread records, their text opened (see `checkpointers.sealed_records`)."""
        return SealedRecords.of(self.graph.checkpointer)

    @property
    def serde(self) -> Any:
        saver = self.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        return saver.serde

    def _audit(self, action: str, record: ThreadRecord, **counts: int) -> None:
        RETENTION.labels(action=action).inc()
        self.audit.record(
            action,
            tenant=record.tenant or None,
            user_id=record.user_id,
            thread_keys=[record.thread_key],
            counts=counts,
        )

    async def apply(self, strategy: TtlStrategy, record: ThreadRecord) -> bool:
        """Apply `strategy` to an expired thread; False if a turn changed it meanwhile."""
        if strategy == "delete":
            return await self.expire(record)
        if strategy == "keep_latest":
            return await self.keep_latest(record)
        return await self.archive_thread(record)

    async def expire(self, record: ThreadRecord) -> bool:
        """Delete the thread from every tier (and any archive object an earlier run left)."""
        saver = self.graph.checkpointer
        assert saver is not None and not isinstance(saver, bool)
        await saver.adelete_thread(record.thread_key)
        if self.archive is not None:
            await self.archive.delete(object_name(record.thread_key))
        self._audit("expire", record, messages=record.message_count)
        return True

    async def keep_latest(self, record: ThreadRecord) -> bool:
        """Cut the thread to one self-contained checkpoint holding its latest state."""
        state = await self.graph.aget_state(_config(record.thread_key))
        if state.created_at is None:
            return await self._nothing_stored(record)
        messages = list(state.values.get("messages") or [])
        written = await self.graph.aupdate_state(
            state.config, {"messages": Overwrite(messages)}, as_node=LAST_NODE
        )
        kept = written["configurable"]["checkpoint_id"]
        await self.records.adelete_checkpoints(record.thread_key, keep=kept)
        marked = await self.records.aupdate_thread_record(
            record.thread_key, {"swept_at": record.updated_at}
        )
        self._audit("keep_latest", record, messages=len(messages))
        return marked is not None

    async def _nothing_stored(self, record: ThreadRecord) -> bool:
        """A record without checkpoints has nothing to cut or archive: mark it swept, so it
        does not come back at the head of every sweep."""
        await self.records.aupdate_thread_record(record.thread_key, {"swept_at": record.updated_at})
        return False

    async def archive_thread(self, record: ThreadRecord) -> bool:
        """Move the thread to the archive: written and verified before anything is deleted."""
        if self.archive is None:
            raise NoArchiveError("THREADLINE_ARCHIVE_URL is not set")
        state = await self.graph.aget_state(_config(record.thread_key))
        if state.created_at is None:
            return await self._nothing_stored(record)
        name = object_name(record.thread_key)
        data = ArchivedThread(record, dict(state.values)).seal(self.serde, name)
        await self.archive.put(name, data)
        stored = await self.archive.get(name)
        if stored != data:
            raise ArchiveError("the archive object read back differs from what was written")
        copy = ArchivedThread.unseal(stored, self.serde, name=name)
        if len(copy.values.get("messages") or []) != len(state.values.get("messages") or []):
            raise ArchiveError("the archive object does not hold the whole transcript")
        marked = await self.records.aupdate_thread_record(
            record.thread_key,
            {"status": ARCHIVED, "swept_at": record.updated_at},
            expect={"status": LIVE, "updated_at": record.updated_at, "hold": False},
        )
        if marked is None:  # a turn or a hold came first (or another sweeper did this)
            return False
        await self.records.adelete_checkpoints(record.thread_key)
        self._audit("archive", record, messages=record.message_count, bytes=len(data))
        return True

    async def restore(self, thread_key: str) -> ThreadRecord:
        """Bring an archived thread back whole; its idle time starts again now."""
        record = await self.records.aget_thread_record(thread_key)
        if record is None:
            raise KeyError(thread_key)
        if record.status != ARCHIVED:
            raise NotArchivedError(thread_key)
        if self.archive is None:
            raise NoArchiveError("the thread is archived but THREADLINE_ARCHIVE_URL is not set")
        name = object_name(thread_key)
        data = await self.archive.get(name)
        if data is None:
            raise NoArchiveError(f"the thread's archive object is missing from {self.archive.url}")
        archived = ArchivedThread.unseal(data, self.serde, name=name)
        values = dict(archived.values)
        values["messages"] = Overwrite(list(values.get("messages") or []))
        await self.records.adelete_checkpoints(thread_key)
        await self.graph.aupdate_state(_config(thread_key), values, as_node=LAST_NODE)
        restored = await self.records.aupdate_thread_record(
            thread_key, {"status": LIVE, "swept_at": None, "updated_at": self.clock()}
        )
        await self.archive.delete(name)
        self._audit("restore", record, messages=record.message_count)
        assert restored is not None
        return restored
