"""Who a thread belongs to, and the record each turn leaves (see `checkpointers.records`).

A thread's owner is the user its first turn named; a request naming another user on an owned
thread is answered as if the thread did not exist (404), so thread ids reveal nothing across
users. A request that names no user acts for the whole tenant.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from pydantic import BaseModel

from threadline.checkpointers.records import KeepsThreadRecords, ThreadRecord, record_metadata
from threadline.checkpointers.sealed_records import SealedRecords
from threadline.durations import format_duration
from threadline.server.threads import (
    TENANT_CONFIG_KEY,
    THREAD_ID_CONFIG_KEY,
    USER_CONFIG_KEY,
    visible_thread_id,
)

TITLE_CHARS = 80


class RecordOut(BaseModel):
    """A thread's record: whose it is, what it is called, when it last changed."""

    thread_id: str
    user_id: str | None
    title: str
    created_at: str
    updated_at: str
    message_count: int
    metadata: dict[str, Any]
    ttl: str | None  # the thread's own idle TTL (`7d`); null: the deployment's
    hold: bool  # legal hold: never expires, archives or is erased
    status: str  # `live`, or `archived` (restore it to read or continue it)

    @classmethod
    def of(cls, record: ThreadRecord) -> RecordOut:
        ttl = record.ttl_seconds
        return cls(
            thread_id=record.thread_id,
            user_id=record.user_id,
            title=record.title,
            created_at=_iso(record.created_at),
            updated_at=_iso(record.updated_at),
            message_count=record.message_count,
            metadata=record.metadata,
            ttl=format_duration(ttl) if ttl is not None else None,
            hold=record.hold,
            status=record.status,
        )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def title_of(messages: Sequence[Any]) -> str:
    """The first human message's text, cut to `TITLE_CHARS` on a word boundary."""
    for message in messages:
        if isinstance(message, BaseMessage) and message.type == "human":
            text = " ".join(message.text.split())
            if len(text) <= TITLE_CHARS:
                return text
            cut = text[: TITLE_CHARS + 1].rsplit(" ", 1)[0]
            return (cut if 0 < len(cut) <= TITLE_CHARS else text[:TITLE_CHARS]).rstrip()
    return ""


def records_of(saver: BaseCheckpointSaver | Any) -> KeepsThreadRecords:
    """The saver's thread records, their text opened (see `checkpointers.sealed_records`)."""
    return SealedRecords.of(saver)


def _identity(config: RunnableConfig) -> tuple[str, str, str, str | None]:
    """(stored thread key, thread id as the client knows it, tenant as stored, user)."""
    configurable: Mapping[str, Any] = config.get("configurable") or {}
    thread_key = str(configurable["thread_id"])
    return (
        thread_key,
        str(configurable.get(THREAD_ID_CONFIG_KEY) or visible_thread_id(thread_key)),
        str(configurable.get(TENANT_CONFIG_KEY) or ""),
        configurable.get(USER_CONFIG_KEY),
    )


def check_owner(record: ThreadRecord | None, user_id: str | None, thread_id: str) -> None:
    """404 for a user other than the owner of an owned thread."""
    if record is not None and None not in (record.user_id, user_id) and record.user_id != user_id:
        raise HTTPException(404, f"no thread {thread_id!r}")


async def check_turn_owner(saver: BaseCheckpointSaver | Any, config: RunnableConfig) -> None:
    thread_key, thread_id, _, user_id = _identity(config)
    if user_id is not None:
        record = await records_of(saver).aget_thread_record(thread_key)
        check_owner(record, user_id, thread_id)


def turn_record(config: RunnableConfig, state: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata that makes the turn's checkpoint upsert its thread's record."""
    thread_key, thread_id, tenant, user_id = _identity(config)
    messages = list(state.get("messages") or [])
    now = time.time()
    record = ThreadRecord(
        thread_key=thread_key,
        tenant=tenant,
        thread_id=thread_id,
        user_id=user_id,
        title=title_of(messages),
        created_at=now,
        updated_at=now,
        message_count=len(messages),
    )
    return record_metadata(record)
