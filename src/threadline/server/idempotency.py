"""Retried turns: recognise them and answer with the first result.

A turn is known by its `Idempotency-Key` header and by the id of its new human message. Both
names, hashed, go into the turn's receipts (`checkpointers.receipts`), which its saver records
in the same write as the turn's checkpoint and keeps for `THREADLINE_IDEMPOTENCY_TTL_SECONDS`,
however many turns follow. A retry within that lifetime gets the state its first run stored; a
key sent again with another request, or a message id sent again with another message, is
refused rather than answered with someone else's result.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from threadline.checkpointers.receipts import KeepsReceipts, Receipt, receipts_metadata

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_CONFIG_KEY = "__threadline_idempotency_key"
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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def request_digest(input: Any) -> str:
    """A digest of what the turn adds, to tell a retry from another request under one key."""
    messages = input.get("messages") if isinstance(input, Mapping) else input
    return _digest([_comparable(m) for m in messages or []])


def _key_name(key: str) -> str:
    return hashlib.sha256(f"key\0{key}".encode()).hexdigest()


def _message_name(message_id: str) -> str:
    return hashlib.sha256(f"message\0{message_id}".encode()).hexdigest()


def turn_receipts(config: RunnableConfig, input: Any, lifetime_seconds: float) -> dict[str, Any]:
    """The metadata that makes the turn's checkpoint record its receipts."""
    digests: dict[str, str] = {}
    if key := (config.get("configurable") or {}).get(IDEMPOTENCY_CONFIG_KEY):
        digests[_key_name(key)] = request_digest(input)
    if message_id := new_message_id(input):
        digests[_message_name(message_id)] = _digest(_comparable(_newest_human(input)))
    return receipts_metadata(digests, time.time() + lifetime_seconds) if digests else {}


async def _first_result(
    graph: CompiledStateGraph[Any, Any, Any, Any], thread_key: str, receipt: Receipt
) -> dict[str, Any]:
    config: RunnableConfig = {
        "configurable": {
            "thread_id": thread_key,
            "checkpoint_ns": receipt.checkpoint_ns,
            "checkpoint_id": receipt.checkpoint_id,
        }
    }
    assert graph.checkpointer is not None and not isinstance(graph.checkpointer, bool)
    if await graph.checkpointer.aget_tuple(config) is None:
        raise HTTPException(
            409, "this turn was stored already, but the checkpoint holding its result was pruned"
        )
    return (await graph.aget_state(config)).values


async def previous_result(
    graph: CompiledStateGraph[Any, Any, Any, Any], config: RunnableConfig, input: Any
) -> dict[str, Any] | None:
    """The state the first run of this turn stored, or None if it never ran."""
    saver = graph.checkpointer
    assert isinstance(saver, KeepsReceipts), "the server's savers keep turn receipts"
    thread_key = config["configurable"]["thread_id"]
    key = (config.get("configurable") or {}).get(IDEMPOTENCY_CONFIG_KEY)
    if key and (found := await saver.aget_receipt(thread_key, _key_name(key))):
        if found.digest != request_digest(input):
            raise HTTPException(
                422, f"this {IDEMPOTENCY_HEADER} was used for a different request; use a new key"
            )
        return await _first_result(graph, thread_key, found)
    message_id = new_message_id(input)
    if message_id is None:
        return None
    if found := await saver.aget_receipt(thread_key, _message_name(message_id)):
        if found.digest != _digest(_comparable(_newest_human(input))):
            raise _id_taken(message_id)
        return await _first_result(graph, thread_key, found)
    current = await graph.aget_state({"configurable": {"thread_id": thread_key}})
    if any(_message_field(m, "id") == message_id for m in current.values.get("messages", [])):
        raise _id_taken(message_id)  # a message of another kind, or stored past the lifetime
    return None


def _id_taken(message_id: str) -> HTTPException:
    return HTTPException(
        409,
        f"a message with id {message_id!r} is already in the thread; give a new message a new id",
    )
