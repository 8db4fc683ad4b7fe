"""Request limits: body size, messages per request, characters, bytes and content parts per
message (413); bad JSON and things that are not messages (422).

Checked before LangServe parses anything, so an oversized request costs one read and a clear
message, never a model call or a write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request

from threadline.settings import Settings

JSON_OVERHEAD_BYTES = 64 * 1024
BYTES_PER_CHAR = 4  # worst case of UTF-8, and of JSON escapes for most text
MAX_JSON_DEPTH = 32
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# What a message may carry besides its text (ids, metadata, tool calls), in bytes of JSON.
MESSAGE_OVERHEAD_BYTES = 16 * 1024
MAX_CONTENT_PARTS = 64
MESSAGE_TYPES = frozenset({"human", "ai", "system", "tool"})


@dataclass(frozen=True)
class Limits:
    max_message_chars: int
    max_messages: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_message_chars, settings.max_messages_per_request)

    @property
    def max_message_bytes(self) -> int:
        """The whole message as JSON: its text at worst-case width, plus the rest."""
        return self.max_message_chars * BYTES_PER_CHAR + MESSAGE_OVERHEAD_BYTES

    @property
    def max_body_bytes(self) -> int:
        return self.max_messages * self.max_message_chars * BYTES_PER_CHAR + JSON_OVERHEAD_BYTES


async def json_body(request: Request, limits: Limits) -> Any:
    """The parsed JSON body, within the size limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise HTTPException(413, f"request body is over {limits.max_body_bytes} bytes")
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:
        raise HTTPException(413, f"request body is over {limits.max_body_bytes} bytes")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise HTTPException(422, "request body is not valid JSON") from None
    except ValueError:  # an integer literal beyond Python's digit limit
        raise HTTPException(422, "request body has a number too long to read") from None
    check_storable(body)
    return body


def _check_text(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise HTTPException(422, "request body has text that is not valid Unicode") from None
    if "\x00" in text:
        # Postgres text cannot hold it, and dropping it silently would change ids and text.
        raise HTTPException(422, "request body has a NUL character (\\u0000); remove it")


def check_storable(body: Any) -> None:
    """422 for JSON that parses but cannot be stored or sent back.

    JSON allows what the serializers behind us refuse: lone surrogates (`"\\ud800"`), NUL
    characters, integers beyond 64 bits and arbitrarily deep nesting. Found by fuzzing; each
    used to end a stream or a checkpoint write with an error instead of a clear answer.
    """
    pending: list[tuple[Any, int]] = [(body, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise HTTPException(422, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
            raise HTTPException(422, "request body has an integer beyond 64 bits")


def message_chars(message: Any) -> int:
    """Characters of text in one message as sent (string content or text parts)."""
    content = message.get("content") if isinstance(message, Mapping) else message
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, Mapping):
                total += sum(len(v) for v in part.values() if isinstance(v, str))
        return total
    return 0


def message_shape_error(message: Any) -> str | None:
    """Why `message` is not a message LangChain can take, or None.

    A message is an object with a known `type` and text content (a string, or a list of
    strings and objects); anything else used to fail deep inside the run with a 500.
    """
    if not isinstance(message, Mapping):
        return f"is {type(message).__name__}, not a message object"
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        return f"has type {kind!r}; expected one of {sorted(MESSAGE_TYPES)}"
    content = message.get("content", "")
    if isinstance(content, list):
        if not all(isinstance(part, str | Mapping) for part in content):
            return "has content parts that are neither text nor objects"
    elif not isinstance(content, str):
        return "has content that is neither text nor a list of parts"
    if "id" in message and message["id"] is not None and not isinstance(message["id"], str):
        return "has an id that is not a string"
    if kind == "tool" and not isinstance(message.get("tool_call_id"), str):
        return "is a tool message without a tool_call_id"
    return None


def check_messages(messages: Any, limits: Limits) -> None:
    """413 when a request carries too many or too large messages, 422 for what is not a
    message; every route checks this before anything runs."""
    if not isinstance(messages, list):
        return
    if len(messages) > limits.max_messages:
        raise HTTPException(
            413, f"{len(messages)} messages in one request; the limit is {limits.max_messages}"
        )
    for number, message in enumerate(messages, 1):
        if problem := message_shape_error(message):
            raise HTTPException(422, f"message {number} {problem}")
        chars = message_chars(message)
        if chars > limits.max_message_chars:
            raise HTTPException(
                413,
                f"message {number} has {chars} characters; the limit is {limits.max_message_chars}",
            )
        content = message.get("content")
        if isinstance(content, list) and len(content) > MAX_CONTENT_PARTS:
            raise HTTPException(
                413,
                f"message {number} has {len(content)} content parts; "
                f"the limit is {MAX_CONTENT_PARTS}",
            )
        size = len(json.dumps(message, ensure_ascii=False).encode())
        if size > limits.max_message_bytes:
            raise HTTPException(
                413,
                f"message {number} is {size} bytes as JSON (ids, metadata and tool calls "
                f"included); the limit is {limits.max_message_bytes}",
            )


def check_turn_input(input: Any, limits: Limits) -> None:
    """Limits first (413), then: a turn brings at least one message (422)."""
    if not isinstance(input, Mapping):
        return
    messages = input.get("messages")
    check_messages(messages, limits)
    if messages == []:
        raise HTTPException(422, "a turn needs at least one new message in input.messages")
