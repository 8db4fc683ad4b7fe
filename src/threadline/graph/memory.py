"""The memory policy as pure functions: what the model sees, and when to fold into the summary.

The transcript is split into *units* that must stay together: a human message, a plain AI
reply, or an AI message with tool calls plus every ToolMessage answering it. Views and folds
only ever take whole units, which is what keeps tool-call pairs intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from threadline.graph.context import MemoryPolicy
from threadline.graph.prompts import CUT_MARKER, SUMMARY_HEADER
from threadline.graph.tokens import TOKENS_PER_REPLY, TokenCounter

MIN_ROOM_FOR_MESSAGES = 32


class BudgetTooSmallError(ValueError):
    """The system prompt alone does not leave room for a conversation."""


@dataclass(frozen=True)
class Unit:
    """Messages `start:end` of the transcript that the view takes or leaves together."""

    start: int
    end: int
    tokens: int
    has_human: bool
    complete: bool  # False for tool calls still waiting for (some of) their results


@dataclass(frozen=True)
class View:
    """What the model receives, and where in the transcript it starts."""

    messages: list[BaseMessage]
    tokens: int
    first_index: int
    transcript_messages_shown: int


def split_units(messages: Sequence[BaseMessage], start: int, counter: TokenCounter) -> list[Unit]:
    """Group `messages[start:]` into units. ToolMessages with no matching call are dropped."""
    units: list[Unit] = []
    i = start
    n = len(messages)
    while i < n:
        message = messages[i]
        if isinstance(message, ToolMessage):
            i += 1  # orphan: its AIMessage was folded or never existed; never show it alone
            continue
        end = i + 1
        complete = True
        if isinstance(message, AIMessage) and message.tool_calls:
            pending = {call["id"] for call in message.tool_calls}
            while end < n and isinstance(messages[end], ToolMessage):
                pending.discard(messages[end].tool_call_id)  # type: ignore[attr-defined]
                end += 1
            complete = not pending
        tokens = sum(counter.count_message(m) for m in messages[i:end])
        units.append(Unit(i, end, tokens, isinstance(message, HumanMessage), complete))
        i = end
    return units


def last_human_index(messages: Sequence[BaseMessage]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return index
    return None


def fixed_messages(policy: MemoryPolicy, summary: str) -> list[BaseMessage]:
    """System prompt first, then the running summary as its own SystemMessage."""
    head: list[BaseMessage] = [SystemMessage(policy.system_prompt)]
    if summary:
        head.append(SystemMessage(f"{SUMMARY_HEADER}\n{summary}"))
    return head


def cut_to_fit(message: BaseMessage, max_tokens: int, counter: TokenCounter) -> BaseMessage:
    """The message with the middle of its text replaced by a visible marker, within max_tokens.

    Only text content is cut; tool-call arguments are left whole. Returns the message itself
    when it already fits.
    """
    tokens = counter.count_message(message)
    if tokens <= max_tokens or not isinstance(message.content, str):
        return message
    text = message.content
    keep_chars = len(text)
    while keep_chars > 0:
        keep_chars = int(keep_chars * max_tokens / max(tokens, 1) * 0.95)
        head, tail = (
            text[: keep_chars // 2],
            text[len(text) - keep_chars // 2 :] if keep_chars else "",
        )
        marker = CUT_MARKER.format(tokens=tokens - max_tokens)
        candidate = message.model_copy(update={"content": f"{head}{marker}{tail}"})
        tokens = counter.count_message(candidate)
        if tokens <= max_tokens:
            return candidate
    return message.model_copy(update={"content": CUT_MARKER.format(tokens=tokens).strip()})


def _room(policy: MemoryPolicy, head: Sequence[BaseMessage], counter: TokenCounter) -> int:
    """Tokens left for transcript messages once the fixed head and reply priming are paid."""
    fixed = sum(counter.count_message(m) for m in head) + TOKENS_PER_REPLY
    return policy.max_context_tokens - fixed


def build_view(
    messages: Sequence[BaseMessage],
    summary: str,
    summarized_count: int,
    policy: MemoryPolicy,
    counter: TokenCounter,
) -> View:
    """System prompt + summary + the newest units that fit `max_context_tokens`.

    Always contains the newest human message (cut with a marker if it alone is over budget),
    never starts with a ToolMessage, never splits a tool-call unit.
    """
    head = fixed_messages(policy, summary)
    room = (
        policy.max_context_tokens - sum(counter.count_message(m) for m in head) - TOKENS_PER_REPLY
    )
    if room < MIN_ROOM_FOR_MESSAGES and summary:
        head[-1] = cut_to_fit(
            head[-1], max(room + counter.count_message(head[-1]) - 256, 16), counter
        )
        room = policy.max_context_tokens - sum(counter.count_message(m) for m in head)
        room -= TOKENS_PER_REPLY
    if room < MIN_ROOM_FOR_MESSAGES:
        raise BudgetTooSmallError(
            f"the system prompt leaves {room} tokens of a {policy.max_context_tokens}-token budget"
        )

    units = [u for u in split_units(messages, summarized_count, counter) if u.complete]
    human_at = last_human_index(messages)
    anchor = next((k for k, u in enumerate(units) if u.start == human_at), None)
    chosen: dict[int, list[BaseMessage]] = {}

    def take(k: int, must: bool = False) -> bool:
        nonlocal room
        unit = units[k]
        if unit.tokens <= room:
            chosen[k] = list(messages[unit.start : unit.end])
            room -= unit.tokens
            return True
        if must and unit.end - unit.start == 1:
            cut = cut_to_fit(messages[unit.start], room, counter)
            chosen[k] = [cut]
            room -= counter.count_message(cut)
            return True
        return False

    if anchor is None:
        for k in range(len(units) - 1, -1, -1):
            if not take(k):
                break
    else:
        take(anchor, must=True)
        newest_after = len(units) - 1
        for k in range(newest_after, anchor, -1):
            if not take(k, must=(k == newest_after)):
                break
        for k in range(anchor - 1, -1, -1):
            if not take(k):
                break

    body = [m for k in sorted(chosen) for m in chosen[k]]
    view = head + body
    first_index = units[min(chosen)].start if chosen else len(messages)
    return View(view, counter.count(view), first_index, len(body))


def plan_fold(
    messages: Sequence[BaseMessage],
    summary: str,
    summarized_count: int,
    policy: MemoryPolicy,
    counter: TokenCounter,
) -> int | None:
    """The new `summarized_count` if the unfolded transcript passed the trigger, else None.

    Folds the oldest whole units until the rest, plus a summary at its cap, sits at the target:
    that gap between trigger and target is the hysteresis that keeps folds rare.
    """
    if policy.memory_strategy != "summarize":
        return None
    head = fixed_messages(policy, summary)
    units = split_units(messages, summarized_count, counter)
    unfolded = sum(u.tokens for u in units)
    if counter.count(head) + unfolded <= policy.trigger_tokens:
        return None
    human_at = last_human_index(messages)
    prompt_tokens = counter.count(head[:1])
    remaining = unfolded
    new_count = summarized_count
    for unit in units:
        if human_at is not None and unit.end > human_at:
            break
        if prompt_tokens + policy.summary_max_tokens + remaining <= policy.target_tokens:
            break
        remaining -= unit.tokens
        new_count = unit.end
    return new_count if new_count > summarized_count else None


def fold_batches(
    messages: Sequence[BaseMessage], start: int, end: int, max_tokens: int, counter: TokenCounter
) -> list[tuple[int, int]]:
    """Split `messages[start:end]` at unit boundaries into batches a summary call can take."""
    batches: list[tuple[int, int]] = []
    batch_start, batch_tokens = start, 0
    for unit in split_units(messages[:end], start, counter):
        if batch_tokens and batch_tokens + unit.tokens > max_tokens:
            batches.append((batch_start, unit.start))
            batch_start, batch_tokens = unit.start, 0
        batch_tokens += unit.tokens
    if batch_start < end:
        batches.append((batch_start, end))
    return batches
