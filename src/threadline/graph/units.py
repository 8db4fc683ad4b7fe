"""The transcript in the pieces the model may see: units that stay together, grouped in turns.

A *unit* is a human message, an AI reply, or an AI message with tool calls together with a
result for every one of its calls (parallel calls included). A *turn* starts at a human
message and runs up to the next one. Views and folds only take whole units (and, except for
the newest turn, whole turns), which is what keeps every tool call next to its results.

The model must never receive a sequence the API rejects, whatever the transcript holds, so
units are repaired on the way out (the transcript itself is never changed):
- a ToolMessage that does not answer a call of the AI message right before its block (an
  orphan, or a duplicate answer) is left out;
- a call whose result never arrived (a crash between the model and the tools) gets a
  placeholder result saying so, as does a malformed call (`invalid_tool_calls`);
- a call without an id, which no result could ever answer, is left out of the AI message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from threadline.graph.prompts import INVALID_TOOL_CALL_RESULT, MISSING_TOOL_RESULT
from threadline.graph.tokens import TokenCounter


@dataclass(frozen=True)
class Unit:
    """Transcript messages `start:end`, shown to the model as `messages` (or not at all)."""

    start: int
    end: int
    messages: tuple[BaseMessage, ...]
    tokens: int
    is_human: bool
    shown: int  # transcript messages that reach the model (placeholders not counted)
    patched: int  # placeholder results added for calls without one


@dataclass(frozen=True)
class Turn:
    """A human unit and the units answering it (or leading units before any human message)."""

    units: tuple[Unit, ...]

    @property
    def start(self) -> int:
        return self.units[0].start

    @property
    def end(self) -> int:
        return self.units[-1].end

    @property
    def tokens(self) -> int:
        return sum(unit.tokens for unit in self.units)

    @property
    def has_human(self) -> bool:
        return self.units[0].is_human


def _calls_something(message: BaseMessage) -> bool:
    return isinstance(message, AIMessage) and bool(
        message.tool_calls
        or message.invalid_tool_calls
        or message.additional_kwargs.get("tool_calls")
    )


def _as_sent(message: AIMessage) -> tuple[AIMessage, list[tuple[str, str, str | None]]]:
    """The AI message with only answerable calls, and (id, name, error) for each of them."""
    seen: set[str] = set()
    calls = []
    expected: list[tuple[str, str, str | None]] = []
    for call in message.tool_calls:
        call_id = call.get("id")
        if call_id and call_id not in seen:
            seen.add(call_id)
            calls.append(call)
            expected.append((call_id, call["name"], None))
    invalid = []
    for bad in message.invalid_tool_calls:
        bad_id = bad.get("id")
        if bad_id and bad_id not in seen:
            seen.add(bad_id)
            invalid.append(bad)
            expected.append((bad_id, bad.get("name") or "", bad.get("error") or "invalid"))
    unchanged = (
        len(calls) == len(message.tool_calls)
        and len(invalid) == len(message.invalid_tool_calls)
        and (calls or invalid or "tool_calls" not in message.additional_kwargs)
    )
    if unchanged:
        return message, expected
    kwargs = {k: v for k, v in message.additional_kwargs.items() if k != "tool_calls"}
    shown = message.model_copy(
        update={"tool_calls": calls, "invalid_tool_calls": invalid, "additional_kwargs": kwargs}
    )
    return shown, expected


def _placeholder(owner: AIMessage, call_id: str, name: str, error: str | None) -> ToolMessage:
    text = MISSING_TOOL_RESULT if error is None else INVALID_TOOL_CALL_RESULT.format(error=error)
    return ToolMessage(text, tool_call_id=call_id, name=name or None, id=f"{owner.id}:{call_id}")


def _tool_unit(
    messages: Sequence[BaseMessage], start: int, end: int, counter: TokenCounter
) -> Unit:
    """`messages[start]` calls tools; `messages[start + 1:end]` are the ToolMessages after it."""
    owner = messages[start]
    assert isinstance(owner, AIMessage)
    shown, expected = _as_sent(owner)
    answers: dict[str, BaseMessage] = {}  # in transcript order
    wanted = {call_id for call_id, _, _ in expected}
    for result in messages[start + 1 : end]:
        call_id = getattr(result, "tool_call_id", None)
        if call_id in wanted and call_id not in answers:
            answers[call_id] = result
    out: list[BaseMessage] = [shown, *answers.values()]
    missing = [call for call in expected if call[0] not in answers]
    out += [_placeholder(owner, call_id, name, error) for call_id, name, error in missing]
    patched = len(missing)
    tokens = sum(counter.count_message(m) for m in out)
    return Unit(start, end, tuple(out), tokens, False, 1 + len(answers), patched)


def _single_unit(messages: Sequence[BaseMessage], index: int, counter: TokenCounter) -> Unit:
    message = messages[index]
    tokens = counter.count_message(message)
    return Unit(index, index + 1, (message,), tokens, isinstance(message, HumanMessage), 1, 0)


def iter_units_backward(
    messages: Sequence[BaseMessage], start: int, counter: TokenCounter
) -> Iterator[Unit]:
    """The units of `messages[start:]`, newest first; lazy, so a view costs what it shows."""
    i = len(messages)
    while i > start:
        k = i - 1
        while k >= start and isinstance(messages[k], ToolMessage):
            k -= 1
        if k < start:
            return  # ToolMessages whose call was folded away: nothing to pair them with
        if _calls_something(messages[k]):
            yield _tool_unit(messages, k, i, counter)
        else:
            yield _single_unit(messages, k, counter)  # ToolMessages after it are orphans
        i = k


def iter_turns_backward(
    messages: Sequence[BaseMessage], start: int, counter: TokenCounter
) -> Iterator[Turn]:
    """The turns of `messages[start:]`, newest first."""
    pending: list[Unit] = []
    for unit in iter_units_backward(messages, start, counter):
        pending.append(unit)
        if unit.is_human:
            yield Turn(tuple(reversed(pending)))
            pending = []
    if pending:
        yield Turn(tuple(reversed(pending)))


def split_turns(messages: Sequence[BaseMessage], start: int, counter: TokenCounter) -> list[Turn]:
    """The turns of `messages[start:]`, oldest first."""
    return list(reversed(list(iter_turns_backward(messages, start, counter))))
