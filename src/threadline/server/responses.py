"""What a served turn answers: what the turn added, not the whole thread.

A response that carried the transcript would grow with every turn (O(history) bytes); a turn's
answer is its own messages (the human input as stored, tool calls and results, the reply), the
budget telemetry of its last model call, and the thread's record. The transcript is
`GET /threads/{id}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessageChunk, AnyMessage, BaseMessage
from pydantic import BaseModel
from typing_extensions import TypedDict

from threadline.graph.state import BudgetTelemetry
from threadline.server.ownership import RecordOut


class TurnOutput(TypedDict):
    """`/agent/invoke`'s output, and the last chunk of `/agent/stream`."""

    messages: list[AnyMessage]  # what this turn added, oldest first; the reply is the last
    telemetry: BudgetTelemetry | None
    thread: dict[str, Any] | None  # the thread's record, as GET /threads lists it


class TurnOutputSchema(BaseModel):
    """`TurnOutput` for the OpenAPI document and LangServe's output_schema."""

    messages: list[AnyMessage]
    telemetry: dict[str, Any] | None = None
    thread: RecordOut | None = None


class ReplyChunk(TypedDict):
    """A piece of the reply as the model produces it (`/agent/stream` before the last chunk)."""

    messages: list[AIMessageChunk]


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _same(stored: BaseMessage, sent: Any) -> bool:
    if (sent_id := _field(sent, "id")) is not None:
        return stored.id == sent_id
    sent_type = {"user": "human", "assistant": "ai"}.get(_field(sent, "type"), _field(sent, "type"))
    return stored.type == sent_type and stored.content == _field(sent, "content")


def turn_messages(stored: Sequence[BaseMessage], sent: Sequence[Any]) -> list[BaseMessage]:
    """The messages from where the turn's input landed in the thread to the end."""
    if not sent:
        return []
    for start in range(len(stored) - 1, -1, -1):
        if _same(stored[start], sent[0]):
            return list(stored[start:])
    humans = [i for i, m in enumerate(stored) if m.type == "human"]
    return list(stored[humans[-1] :]) if humans else []


def turn_output(state: Mapping[str, Any], input: Any, record: RecordOut | None) -> TurnOutput:
    sent = _field(input, "messages") or []
    return TurnOutput(
        messages=turn_messages(state.get("messages") or [], sent),  # type: ignore[typeddict-item]
        telemetry=state.get("telemetry"),
        thread=record.model_dump() if record else None,
    )
