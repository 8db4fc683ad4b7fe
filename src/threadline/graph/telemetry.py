"""Budget telemetry: what each model call cost against its budget, in state and in the log.

Only numbers and names are logged, never message or summary text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from threadline.graph.context import MemoryPolicy
from threadline.graph.memory import View
from threadline.graph.state import BudgetTelemetry

log = logging.getLogger("threadline.memory")


@dataclass(frozen=True)
class StepFacts:
    """What the trim-or-summarize step knows besides the view it built."""

    transcript_messages: int
    summarized_messages: int
    folded_this_turn: int
    total_folds: int
    summary_calls: int
    summary_seconds: float
    tool_schema_tokens: int
    exact_count: bool
    unfolded_tokens: int | None = None
    summary_error: str | None = None


def budget_telemetry(policy: MemoryPolicy, view: View, facts: StepFacts) -> BudgetTelemetry:
    unsummarised = facts.transcript_messages - facts.summarized_messages
    telemetry = BudgetTelemetry(
        view_tokens=view.tokens,
        budget=policy.max_context_tokens,
        percent_used=round(100 * view.tokens / policy.max_context_tokens, 1),
        view_messages=len(view.messages),
        transcript_messages=facts.transcript_messages,
        summarized_messages=facts.summarized_messages,
        hidden_messages=max(unsummarised - view.shown, 0),
        cut_messages=view.cut,
        patched_tool_results=view.patched,
        folded_this_turn=facts.folded_this_turn,
        total_folds=facts.total_folds,
        summary_calls=facts.summary_calls,
        summary_seconds=round(facts.summary_seconds, 3),
        summary_tokens=view.summary_tokens,
        summary_cap_tokens=policy.summary_cap_tokens,
        tool_schema_tokens=facts.tool_schema_tokens,
        strategy=policy.memory_strategy,
        exact_count=facts.exact_count,
    )
    if facts.unfolded_tokens is not None:
        telemetry["unfolded_tokens"] = facts.unfolded_tokens
        telemetry["percent_of_trigger"] = round(
            100 * facts.unfolded_tokens / max(policy.trigger_tokens, 1), 1
        )
    if facts.summary_error is not None:
        telemetry["summary_error"] = facts.summary_error
    return telemetry


def log_telemetry(telemetry: BudgetTelemetry) -> None:
    log.info(
        "context budget: %d/%d tokens (%.1f%%), %d messages shown, %d hidden, %d cut, "
        "%d folded (%d folds), summary %d/%d tokens, strategy %s%s",
        telemetry["view_tokens"],
        telemetry["budget"],
        telemetry["percent_used"],
        telemetry["view_messages"],
        telemetry["hidden_messages"],
        telemetry["cut_messages"],
        telemetry["folded_this_turn"],
        telemetry["total_folds"],
        telemetry["summary_tokens"],
        telemetry["summary_cap_tokens"],
        telemetry["strategy"],
        f", summary failed: {telemetry['summary_error']}" if "summary_error" in telemetry else "",
    )
