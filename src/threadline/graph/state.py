"""The agent's state: the full transcript plus the bookkeeping of its running summary."""

from __future__ import annotations

from typing import Annotated, NotRequired

from langchain_core.messages import AnyMessage
from typing_extensions import TypedDict

from threadline.graph.transcript import TranscriptChannel, append_messages


class BudgetTelemetry(TypedDict):
    """How one model call used its context budget (the fields of Agent Memory Server's
    `context_percentage_total_used` / `..._until_summarization`, and more)."""

    view_tokens: int  # prompt tokens of the request: messages, reply priming, tool definitions
    budget: int
    percent_used: float
    view_messages: int  # messages in the request, system prompt and summary included
    transcript_messages: int
    summarized_messages: int  # leading transcript messages represented by the summary
    hidden_messages: int  # unsummarised transcript messages left out of this view
    cut_messages: int  # messages shown cut with a marker
    patched_tool_results: int  # placeholder results for tool calls without one
    folded_this_turn: int  # transcript messages folded into the summary in this step
    total_folds: int
    summary_calls: int  # summary calls made in this step (failed ones included)
    summary_seconds: float
    summary_tokens: int
    summary_cap_tokens: int
    tool_schema_tokens: int
    strategy: str
    exact_count: bool  # tiktoken (exact for OpenAI) or the approximation
    unfolded_tokens: NotRequired[int]  # summarize only: the view if nothing were trimmed
    percent_of_trigger: NotRequired[float]  # summarize only: 100 = the next step folds
    summary_error: NotRequired[str]  # exception type of a failed or timed-out summary call
    pii_detections: NotRequired[dict[str, int]]  # values protected before storing, by type


class InputState(TypedDict):
    """What callers send: new messages only (MessagesState-compatible, Studio chat mode)."""

    messages: Annotated[list[AnyMessage], TranscriptChannel(append_messages)]


class ThreadState(InputState, total=False):
    """The persisted thread. `messages` is the whole transcript; it is only ever appended to.

    `summarized_count` leading messages are folded into `summary`; the model sees the summary
    instead of them. Both change only together, in one node update.
    """

    summary: str
    summarized_count: int
    total_folds: int
    telemetry: BudgetTelemetry
    # Index of the human message whose turn last saw a summary call fail: no new attempt is
    # made until a newer human message arrives, so a failing model costs one try per turn.
    summary_failed_turn: int
