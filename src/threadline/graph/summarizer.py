"""Extending the running summary with newly folded turns: one model call per batch."""

from __future__ import annotations

import json
from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from threadline.graph.prompts import SUMMARY_INSTRUCTIONS, SUMMARY_REQUEST


def render_transcript(messages: Sequence[BaseMessage]) -> str:
    """Turns as plain text: summary calls must not carry tool-call structure (no 400s)."""
    lines: list[str] = []
    for message in messages:
        text = message.text if isinstance(message.content, list) else str(message.content)
        if isinstance(message, HumanMessage):
            lines.append(f"User: {text}")
        elif isinstance(message, AIMessage):
            if text:
                lines.append(f"Assistant: {text}")
            for call in message.tool_calls:
                lines.append(f"Assistant called {call['name']}({json.dumps(call['args'])})")
        elif isinstance(message, ToolMessage):
            lines.append(f"Tool {message.name or message.tool_call_id} returned: {text}")
        elif isinstance(message, SystemMessage):
            lines.append(f"System: {text}")
    return "\n".join(lines)


def summary_request(
    summary: str, messages: Sequence[BaseMessage], max_tokens: int
) -> list[BaseMessage]:
    """The messages of one summary call."""
    return [
        SystemMessage(SUMMARY_INSTRUCTIONS.format(max_tokens=max_tokens)),
        HumanMessage(
            SUMMARY_REQUEST.format(
                summary=summary or "(none yet)", transcript=render_transcript(messages)
            )
        ),
    ]


def summary_text(reply: BaseMessage) -> str:
    """The reply's text; an empty reply is a failure, never a summary."""
    text = reply.text.strip() if isinstance(reply.content, list) else str(reply.content).strip()
    if not text:
        raise ValueError("the model returned an empty summary")
    return text


async def aextend_summary(
    model: BaseChatModel, summary: str, messages: Sequence[BaseMessage], max_tokens: int
) -> str:
    reply = await model.ainvoke(summary_request(summary, messages, max_tokens))
    return summary_text(reply)


def extend_summary(
    model: BaseChatModel, summary: str, messages: Sequence[BaseMessage], max_tokens: int
) -> str:
    reply = model.invoke(summary_request(summary, messages, max_tokens))
    return summary_text(reply)
