"""The agent's state: the full transcript plus the bookkeeping of its running summary."""

from __future__ import annotations

from typing import Annotated, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict


class BudgetTelemetry(TypedDict):
    """How the last model call used its context budget (mirrors Agent Memory Server's fields)."""

    view_tokens: int
    budget: int
    percent_used: float
    view_messages: int
    transcript_messages: int
    folded_this_turn: int
    total_folds: int
    summary_tokens: int
    strategy: str
    summary_error: NotRequired[str]


class InputState(TypedDict):
    """What callers send: new messages only (MessagesState-compatible, Studio chat mode)."""

    messages: Annotated[list[AnyMessage], add_messages]


class ThreadState(InputState, total=False):
    """The persisted thread. `messages` is the whole transcript; it is never rewritten.

    `summarized_count` leading messages are folded into `summary`; the model sees the summary
    instead of them. Both change only together, in one node update.
    """

    summary: str
    summarized_count: int
    total_folds: int
    telemetry: BudgetTelemetry
