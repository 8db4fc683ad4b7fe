"""Retried turns: recognise them and answer with the first result.

A turn is recognised by its `Idempotency-Key` header or by the id of its new human message. Both
are written into the metadata of the turn's one checkpoint, in the same write as the turn itself,
so there is no separate store that could disagree with the thread: the result exists exactly
when the turn does, in whichever backend holds the thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple
from langgraph.graph.state import CompiledStateGraph

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_CONFIG_KEY = "__threadline_idempotency_key"
KEY_METADATA = "threadline_idempotency_key"
MESSAGE_METADATA = "threadline_message_id"
DIGEST_METADATA = "threadline_request_digest"
MAX_KEY_CHARS = 255


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY_CHARS or not value.isprintable():
        raise HTTPException(
            422, f"{IDEMPOTENCY_HEADER} must be 1-{MAX_KEY_CHARS} printable characters"
        )
    return value


def _message_field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _newest_human(input: Any) -> Any:
    messages = input.get("messages") if isinstance(input, Mapping) else None
    for message in reversed(messages or []):
        if _message_field(message, "type") in ("human", "user"):
            return message
    return None


def new_message_id(input: Any) -> str | None:
    """The id the client gave its newest human message, if any."""
    message_id = _message_field(_newest_human(input), "id")
    return message_id if isinstance(message_id, str) and message_id else None


def _comparable(message: Any) -> Any:
    if isinstance(message, BaseMessage):
        return {"type": message.type, "content": message.content, "id": message.id}
    if isinstance(message, Mapping):
        return {name: message.get(name) for name in ("type", "content", "id")}
    return message


def request_digest(input: Any) -> str:
    """A digest of what the turn adds, to tell a retry from another request under one key."""
    messages = input.get("messages") if isinstance(input, Mapping) else input
    canonical = json.dumps(
        [_comparable(m) for m in messages or []], sort_keys=True, default=str
    ).encode()
    return hashlib.sha256(canonical).hexdigest()


def turn_metadata(config: RunnableConfig, input: Any) -> dict[str, str]:
    """What the turn's checkpoint records so that a retry can find it."""
    metadata: dict[str, str] = {}
    if key := (config.get("configurable") or {}).get(IDEMPOTENCY_CONFIG_KEY):
        metadata[KEY_METADATA] = key
        metadata[DIGEST_METADATA] = request_digest(input)
    if message_id := new_message_id(input):
        metadata[MESSAGE_METADATA] = message_id
    return metadata


async def find_turn(
    saver: BaseCheckpointSaver, thread_key: str, wanted: dict[str, str]
) -> CheckpointTuple | None:
    """The newest checkpoint whose metadata has `wanted`.

    The metadata is checked here too: not every saver applies `filter` faithfully.
    """
    config: RunnableConfig = {"configurable": {"thread_id": thread_key}}
    async for saved in saver.alist(config, filter=wanted):
        if all(saved.metadata.get(name) == value for name, value in wanted.items()):
            return saved
    return None


async def previous_result(
    graph: CompiledStateGraph[Any, Any, Any, Any], config: RunnableConfig, input: Any
) -> dict[str, Any] | None:
    """The state the first run of this turn ended with, or None if it never ran."""
    saver = graph.checkpointer
    assert isinstance(saver, BaseCheckpointSaver)
    thread_key = config["configurable"]["thread_id"]
    recorded = turn_metadata(config, input)
    key = recorded.get(KEY_METADATA)
    if key and (found := await find_turn(saver, thread_key, {KEY_METADATA: key})):
        if (
            found.metadata.get(DIGEST_METADATA, recorded[DIGEST_METADATA])
            != recorded[DIGEST_METADATA]
        ):
            raise HTTPException(
                422, f"this {IDEMPOTENCY_HEADER} was used for a different request; use a new key"
            )
        return (await graph.aget_state(found.config)).values
    message_id = recorded.get(MESSAGE_METADATA)
    if message_id is None:
        return None
    thread_config: RunnableConfig = {"configurable": {"thread_id": thread_key}}
    current = await graph.aget_state(thread_config)
    stored = [
        m for m in current.values.get("messages", []) if _message_field(m, "id") == message_id
    ]
    if not stored:
        return None
    if _comparable(stored[0]) != _comparable(_newest_human(input)):
        raise HTTPException(
            409,
            f"a different message with id {message_id!r} is already in the thread; "
            "give a new message a new id",
        )
    found = await find_turn(saver, thread_key, {MESSAGE_METADATA: message_id})
    return (await graph.aget_state(found.config)).values if found else current.values
