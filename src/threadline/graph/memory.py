"""The memory policy as pure functions: what the model sees, and when to fold into the summary.

The view is: the system prompt, the running summary (one SystemMessage, never over the
summary's cap), then the newest messages that fit `max_context_tokens`:
- the newest turn is always there: its human message and its latest unit are pinned (cut
  with a visible marker if together they are over the room left), its other units follow
  newest first while they fit;
- older turns are then added whole, newest first, until one does not fit;
- a single message larger than the whole budget is therefore shown cut, never dropped and
  never a reason to fail; once older than the newest turn it is folded (cut again in the
  summary request) or trimmed like any other turn.

Folding: when system prompt + summary + every unsummarised message would pass the trigger,
the oldest whole turns are folded until the rest, with the summary at its cap, is at or under
the target. The newest turn is never folded, so a fold always makes progress or does not
happen: there is no loop to get stuck in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from threadline.graph.context import InvalidOverrideError, MemoryPolicy
from threadline.graph.cutting import cut_message, fit_messages
from threadline.graph.prompts import SUMMARY_HEADER
from threadline.graph.summarizer import SummaryBatch, batch_for_summary
from threadline.graph.tokens import TOKENS_PER_REPLY, TokenCounter
from threadline.graph.units import Turn, Unit, iter_turns_backward, split_turns

MIN_ROOM_FOR_CONVERSATION = 96
MAX_SUMMARY_CALLS_PER_TURN = 4


class BudgetTooSmallError(InvalidOverrideError):
    """The budget cannot hold the fixed part of the request plus a minimal conversation.

    An `InvalidOverrideError`, because a request's overrides (a smaller budget, a longer
    system prompt) are the usual cause; with the configured defaults it means the settings
    themselves cannot work, which the message says.
    """


@dataclass(frozen=True)
class View:
    """What the model receives, and how it relates to the transcript."""

    messages: list[BaseMessage]
    tokens: int  # the request's prompt tokens: messages, reply priming and tool definitions
    summary_tokens: int
    shown: int  # transcript messages that reach the model (whole or cut)
    cut: int  # messages shown cut to fit
    patched: int  # placeholder results for tool calls that have none


@dataclass(frozen=True)
class FoldPlan:
    """Fold `batches` in order (one summary call each); `unfolded_tokens` is what triggered it."""

    batches: list[SummaryBatch]
    unfolded_tokens: int


def summary_message(summary: str, policy: MemoryPolicy, counter: TokenCounter) -> BaseMessage:
    """The summary as the model sees it, cut to the policy's cap (which a smaller per-request
    budget may have lowered since it was written)."""
    message = SystemMessage(f"{SUMMARY_HEADER}\n{summary}")
    return cut_message(message, policy.summary_cap_tokens, counter)


def fixed_messages(policy: MemoryPolicy, summary: str, counter: TokenCounter) -> list[BaseMessage]:
    """System prompt first, then the running summary as its own SystemMessage."""
    head: list[BaseMessage] = [SystemMessage(policy.system_prompt)]
    if summary:
        head.append(summary_message(summary, policy, counter))
    return head


def check_budget(policy: MemoryPolicy, counter: TokenCounter, tool_tokens: int = 0) -> None:
    """Raise `BudgetTooSmallError` unless the budget leaves the conversation real room.

    The system prompt may take at most half the budget; prompt, tool definitions and a
    summary at its cap must leave `MIN_ROOM_FOR_CONVERSATION` tokens.
    """
    prompt_tokens = counter.count_message(SystemMessage(policy.system_prompt))
    if prompt_tokens > policy.system_prompt_cap_tokens:
        raise BudgetTooSmallError(
            f"the system prompt ({prompt_tokens} tokens) may use at most half of the "
            f"{policy.max_context_tokens}-token context budget"
        )
    fixed = prompt_tokens + tool_tokens + policy.summary_cap_tokens + TOKENS_PER_REPLY
    if policy.max_context_tokens - fixed < MIN_ROOM_FOR_CONVERSATION:
        raise BudgetTooSmallError(
            f"a {policy.max_context_tokens}-token context budget leaves no room for the "
            f"conversation: system prompt {prompt_tokens}, tool definitions {tool_tokens}, "
            f"summary cap {policy.summary_cap_tokens} tokens"
        )


def last_human_index(messages: Sequence[BaseMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return index
    return None


def _view_start(messages: Sequence[BaseMessage], summarized_count: int) -> int:
    """Where unsummarised messages start; never after the newest human message."""
    start = min(max(summarized_count, 0), len(messages))
    newest_human = last_human_index(messages)
    if newest_human is not None and newest_human < start:
        start = newest_human  # a state that folded it (edited by hand): still show it
    return start


def build_view(
    messages: Sequence[BaseMessage],
    summary: str,
    summarized_count: int,
    policy: MemoryPolicy,
    counter: TokenCounter,
    tool_tokens: int = 0,
) -> View:
    """System prompt + summary + the newest messages that fit `max_context_tokens`.

    Always within the budget, always contains the newest human message (cut with a visible
    marker if it alone is too large), never starts with or orphans a ToolMessage, never splits
    a tool-call unit. Raises `BudgetTooSmallError` only if the fixed part leaves no room, or
    the newest turn's pinned units cannot fit even cut (hundreds of parallel tool calls in a
    tiny budget).
    """
    head = fixed_messages(policy, summary, counter)
    head_tokens = sum(counter.count_message(m) for m in head)
    room = policy.max_context_tokens - head_tokens - TOKENS_PER_REPLY - tool_tokens
    if room < MIN_ROOM_FOR_CONVERSATION:
        raise BudgetTooSmallError(
            f"the system prompt and summary leave {room} tokens of a "
            f"{policy.max_context_tokens}-token budget"
        )
    turns = iter_turns_backward(messages, _view_start(messages, summarized_count), counter)
    newest = next(turns, None)
    body: list[BaseMessage] = []
    units: list[Unit] = []
    cut = 0
    left = room
    if newest is not None:
        body, units, cut, left = _newest_turn(newest, room, counter)
        older: list[Turn] = []
        for turn in turns:
            if turn.tokens > left:
                break
            older.append(turn)
            left -= turn.tokens
        older.reverse()
        body = [m for turn in older for unit in turn.units for m in unit.messages] + body
        units += [unit for turn in older for unit in turn.units]
    return View(
        messages=head + body,
        tokens=policy.max_context_tokens - left,  # every token counted once, on the way in
        summary_tokens=counter.count_message(head[1]) if len(head) > 1 else 0,
        shown=sum(unit.shown for unit in units),
        cut=cut,
        patched=sum(unit.patched for unit in units),
    )


def _newest_turn(
    turn: Turn, room: int, counter: TokenCounter
) -> tuple[list[BaseMessage], list[Unit], int, int]:
    """The newest turn within `room`: (messages, units shown, messages cut, room left).

    Its first unit (the human message) and last unit (the latest reply or tool results the
    model must answer) are pinned and cut if need be; the units between them follow, newest
    first, while they fit whole.
    """
    first, last = turn.units[0], turn.units[-1]
    pinned = [first] if len(turn.units) == 1 else [first, last]
    originals = [m for unit in pinned for m in unit.messages]
    fitted = fit_messages(originals, room, counter)
    if fitted is None:
        raise BudgetTooSmallError(
            f"the newest turn needs more than the {room} tokens left even when cut"
        )
    cut = sum(1 for before, after in zip(originals, fitted, strict=True) if before is not after)
    room -= sum(counter.count_message(m) for m in fitted)
    middle: list[Unit] = []
    for unit in reversed(turn.units[1:-1]):
        if unit.tokens > room:
            break
        middle.append(unit)
        room -= unit.tokens
    middle.reverse()
    split = len(first.messages)
    messages = fitted[:split] + [m for unit in middle for m in unit.messages] + fitted[split:]
    return messages, pinned + middle, cut, room


def plan_fold(
    messages: Sequence[BaseMessage],
    summary: str,
    summarized_count: int,
    policy: MemoryPolicy,
    counter: TokenCounter,
    tool_tokens: int = 0,
) -> FoldPlan | None:
    """The batches to fold if the unfolded conversation passed the trigger, else None.

    Folds the oldest whole turns (never the newest) until the rest, plus a summary at its
    cap, sits at the target: the gap between trigger and target is the hysteresis that keeps
    folds rare. At most `MAX_SUMMARY_CALLS_PER_TURN` batches, so a large backlog (after a
    switch from `trim`, or failed calls) is worked off over several turns, not in one.
    """
    if policy.memory_strategy != "summarize":
        return None
    start = _view_start(messages, summarized_count)
    turns = split_turns(messages, start, counter)
    fixed = counter.count_message(SystemMessage(policy.system_prompt)) + TOKENS_PER_REPLY
    fixed += tool_tokens
    summary_tokens = (
        counter.count_message(summary_message(summary, policy, counter)) if summary else 0
    )
    remaining = sum(turn.tokens for turn in turns)
    unfolded = fixed + summary_tokens + remaining
    if unfolded <= policy.trigger_tokens or len(turns) < 2:
        return None
    folding = 0
    for turn in turns[:-1]:
        if fixed + policy.summary_cap_tokens + remaining <= policy.target_tokens:
            break
        remaining -= turn.tokens
        folding += 1
    if folding == 0:
        return None
    span = (start, turns[folding].start)
    batches = batch_for_summary(turns[:folding], span, policy, counter)
    return FoldPlan(batches[:MAX_SUMMARY_CALLS_PER_TURN], unfolded)
