"""Cutting text that does not fit, visibly.

A message too large for the room it has keeps its beginning and its end; the middle is
replaced by a marker saying how many characters were cut, so neither the model nor a person
reading the request mistakes it for the whole message. The transcript keeps the original.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage

from threadline.graph.prompts import ALL_CUT_MARKER, CUT_MARKER, CUT_PARTS, CUT_TOOL_ARGUMENTS
from threadline.graph.tokens import TokenCounter

_MAX_ATTEMPTS = 12
_ROOM_FOR_A_MARKER = 24


def message_text(message: BaseMessage) -> str:
    """The message's text; for multi-part content, its text parts joined."""
    if isinstance(message.content, str):
        return message.content
    return message.text


def _non_text_parts(message: BaseMessage) -> int:
    if isinstance(message.content, str):
        return 0
    return sum(
        1
        for part in message.content
        if not isinstance(part, str) and not (isinstance(part, dict) and part.get("type") == "text")
    )


def cut_text(
    text: str, max_tokens: int, counter: TokenCounter, *, tokens: int | None = None
) -> str:
    """`text` within `max_tokens`, its middle replaced by a marker if it had to be cut.

    `tokens` is the text's size when the caller knows it (spares encoding a huge text again).
    Returns the bare marker when even a few characters of the text do not fit (the marker
    itself may then be over `max_tokens`; callers check).
    """
    if tokens is None:
        tokens = counter.count_text(text)
    if tokens <= max_tokens:
        return text
    marker_tokens = counter.count_text(CUT_MARKER.format(chars=len(text)))
    keep = int(len(text) * (max_tokens - marker_tokens) / max(tokens, 1))
    for _ in range(_MAX_ATTEMPTS):
        if keep <= 0:
            break
        head, tail = text[: keep - keep // 2], text[len(text) - keep // 2 :]
        candidate = f"{head}{CUT_MARKER.format(chars=len(text) - keep)}{tail}"
        measured = counter.count_text(candidate)
        if measured <= max_tokens:
            return candidate
        overshoot = max_tokens / measured
        keep = min(keep - 1, int(keep * overshoot * 0.97))
    return ALL_CUT_MARKER.format(chars=len(text))


def cut_message(message: BaseMessage, max_tokens: int, counter: TokenCounter) -> BaseMessage:
    """The message within `max_tokens` if cutting its text (then its tool arguments) can do it.

    The copy keeps the message's id, type and tool-call ids, so pairing is unaffected;
    multi-part content becomes its text, with a marker for the images and other parts dropped.
    Returns the smallest form it can reach when even that is over `max_tokens`.
    """
    tokens = counter.count_message(message)
    if tokens <= max_tokens:
        return message
    text = message_text(message)
    if dropped := _non_text_parts(message):
        text = f"{text}\n{CUT_PARTS.format(parts=dropped)}".lstrip()
    bare = message.model_copy(update={"content": ""})
    # For string content the text's size is known exactly: it is encoded on its own.
    text_tokens = (
        max(tokens - counter.count_message(bare), 1) if isinstance(message.content, str) else None
    )
    arguments_too_large = counter.count_message(bare) + _ROOM_FOR_A_MARKER > max_tokens
    if isinstance(message, AIMessage) and message.tool_calls and arguments_too_large:
        calls = [{**call, "args": {"note": CUT_TOOL_ARGUMENTS}} for call in message.tool_calls]
        bare = bare.model_copy(update={"tool_calls": calls})
    room = max_tokens - counter.count_message(bare)
    content = cut_text(text, room, counter, tokens=text_tokens) if text else ""
    return bare.model_copy(update={"content": content})


def fit_messages(
    messages: Sequence[BaseMessage], room: int, counter: TokenCounter
) -> list[BaseMessage] | None:
    """All of `messages` within `room` tokens, cutting the largest first; None if impossible.

    Water-filling: find the largest per-message size `c` such that every message cut to at
    most `c` fits, then cut only those above it, so small messages stay whole.
    """
    sizes = [counter.count_message(m) for m in messages]
    if sum(sizes) <= room:
        return list(messages)
    floors = [
        min(size, counter.count_message(cut_message(m, 0, counter)))
        for m, size in zip(messages, sizes, strict=True)
    ]
    if sum(floors) > room:
        return None

    def cost(cap: int) -> int:
        return sum(min(s, max(cap, f)) for s, f in zip(sizes, floors, strict=True))

    low, high = 0, max(sizes)
    while low < high:
        mid = (low + high + 1) // 2
        if cost(mid) <= room:
            low = mid
        else:
            high = mid - 1
    fitted = [
        cut_message(m, max(low, floor), counter) if size > low else m
        for m, size, floor in zip(messages, sizes, floors, strict=True)
    ]
    if sum(counter.count_message(m) for m in fitted) > room:
        return None
    return fitted
