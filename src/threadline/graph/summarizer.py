"""Extending the running summary with newly folded turns: what one summary call sends.

Turns are rendered as plain text, so a summary request never carries tool-call structure
(and can never be rejected for it). Turns are packed into batches so that every request,
with the existing summary at its cap, fits the same context budget as the conversation; a
turn too large for a request on its own is cut with a visible marker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from threadline.graph.context import MemoryPolicy
from threadline.graph.cutting import cut_text, message_text
from threadline.graph.prompts import (
    NO_SUMMARY_YET,
    SUMMARY_HEADER,
    SUMMARY_INSTRUCTIONS,
    SUMMARY_REQUEST,
)
from threadline.graph.tokens import TokenCounter
from threadline.graph.units import Turn

_SAFETY_TOKENS = 8


@dataclass(frozen=True)
class SummaryBatch:
    """Transcript messages `start:end`, rendered for one summary call."""

    start: int
    end: int  # the new `summarized_count` once this batch is folded
    transcript: str


def render_message(message: BaseMessage) -> str:
    text = message_text(message)
    if isinstance(message, HumanMessage):
        return f"User: {text}"
    if isinstance(message, AIMessage):
        lines = [f"Assistant: {text}"] if text else []
        lines += [
            f"Assistant called {call['name']}({json.dumps(call['args'], ensure_ascii=False)})"
            for call in message.tool_calls
        ]
        return "\n".join(lines) or "Assistant: (no text)"
    if isinstance(message, ToolMessage):
        return f"Tool {message.name or message.tool_call_id} returned: {text}"
    if isinstance(message, SystemMessage):
        return f"System: {text}"
    return f"{message.type}: {text}"


def summary_request(summary: str, transcript: str, max_tokens: int) -> list[BaseMessage]:
    """The messages of one summary call."""
    return [
        SystemMessage(SUMMARY_INSTRUCTIONS.format(max_tokens=max_tokens)),
        HumanMessage(
            SUMMARY_REQUEST.format(summary=summary or NO_SUMMARY_YET, transcript=transcript)
        ),
    ]


def capped_summary(summary: str, policy: MemoryPolicy, counter: TokenCounter) -> str:
    """The summary text cut so that, framed as the view's summary message, it fits its cap."""
    frame = counter.count_message(SystemMessage(f"{SUMMARY_HEADER}\n"))
    return cut_text(summary, policy.summary_cap_tokens - frame - _SAFETY_TOKENS, counter)


def transcript_room(policy: MemoryPolicy, counter: TokenCounter) -> int:
    """Tokens a batch's transcript may use so the request, summary at its cap, fits the budget."""
    frame = counter.count(summary_request("", "", policy.summary_cap_tokens))
    return policy.max_context_tokens - frame - policy.summary_cap_tokens - _SAFETY_TOKENS


def _turn_text(turn: Turn, room: int, counter: TokenCounter) -> tuple[str, int]:
    text = "\n".join(render_message(m) for unit in turn.units for m in unit.messages)
    text = cut_text(text, room - 1, counter)
    return text, counter.count_text(text) + 1  # + the newline joining it to the next turn


def batch_for_summary(
    turns: Sequence[Turn], span: tuple[int, int], policy: MemoryPolicy, counter: TokenCounter
) -> list[SummaryBatch]:
    """`turns` (oldest first) in batches covering the transcript `span` (start, end) whole,
    stray messages between turns included."""
    room = max(transcript_room(policy, counter), 1)
    batches: list[SummaryBatch] = []
    texts: list[str] = []
    used = 0
    start, end = span
    for turn in turns:
        text, tokens = _turn_text(turn, room, counter)
        if texts and used + tokens > room:
            batches.append(SummaryBatch(start, turn.start, "\n".join(texts)))
            texts, used, start = [], 0, turn.start
        texts.append(text)
        used += tokens
    batches.append(SummaryBatch(start, end, "\n".join(texts)))
    return batches


def summary_text(reply: BaseMessage) -> str:
    """The reply's text; an empty reply is a failure, never a summary."""
    text = message_text(reply).strip()
    if not text:
        raise ValueError("the model returned an empty summary")
    return text
