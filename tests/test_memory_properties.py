"""Property tests of the pure memory policy: views, folds, summary batches and cutting.

Transcripts are random mixes of human messages, AI replies, single and parallel tool calls
(results missing, reordered, duplicated or orphaned as after crashes), malformed tool calls
and messages far larger than the whole budget. Every view must satisfy the invariants the
API and the product promise; `validate_messages` is the stub's copy of the API's own rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from tests.fixtures.openai_stub import validate_messages
from threadline.graph.context import MemoryPolicy
from threadline.graph.cutting import cut_text, fit_messages
from threadline.graph.memory import (
    MAX_SUMMARY_CALLS_PER_TURN,
    BudgetTooSmallError,
    View,
    build_view,
    check_budget,
    plan_fold,
)
from threadline.graph.prompts import ALL_CUT_MARKER
from threadline.graph.summarizer import capped_summary, summary_request
from threadline.graph.tokens import (
    TOKENS_PER_REPLY,
    TokenCounter,
    make_token_counter,
    openai_payload,
)
from threadline.graph.units import split_turns

COUNTER = make_token_counter("gpt-4o-mini")
CUT_NOTE = "cut to fit the context budget"  # in every cut marker
PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

WORDS = ["alpha", "beta", "gamma", "delta", "naïve", "über", "数据", "🙂", "x", "0.5", "\n", "{}"]


@st.composite
def texts(draw: st.DrawFn, huge: bool = True) -> str:
    """Text from empty to far over any budget here (40k characters)."""
    size = draw(
        st.one_of(
            st.integers(0, 40),
            st.integers(40, 600),
            st.integers(5_000, 40_000) if huge else st.integers(40, 600),
        )
    )
    seed = draw(st.integers(0, 10_000))
    words = itertools.islice(itertools.cycle(WORDS[seed % 7 :] + WORDS), size // 5 + 1)
    return " ".join(words)[:size]


_ids = itertools.count()


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@st.composite
def events(draw: st.DrawFn) -> list[BaseMessage]:
    """One transcript event: a message, or a tool round in some (possibly broken) shape."""
    kind = draw(
        st.sampled_from(
            [
                *("human", "human", "image", "ai", "tools", "tools"),
                *("crash", "orphan", "invalid", "noid"),
            ]
        )
    )
    if kind == "human":
        return [HumanMessage(draw(texts()), id=_id("h"))]
    if kind == "image":
        image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        if draw(st.booleans()):
            image["image_url"]["detail"] = "low"
        parts = [{"type": "text", "text": draw(texts())}, image]
        return [HumanMessage(parts * draw(st.integers(1, 3)), id=_id("h"))]
    if kind == "ai":
        return [AIMessage(draw(texts()), id=_id("a"))]
    if kind == "orphan":
        return [ToolMessage(draw(texts()), tool_call_id=_id("ghost"), id=_id("t"))]
    if kind == "invalid":
        bad = {"name": "lookup", "args": "{oops", "id": _id("c"), "error": "bad json"}
        return [AIMessage("", invalid_tool_calls=[bad], id=_id("a"))]
    calls = [
        {"name": "lookup", "args": {"q": draw(texts(huge=False))}, "id": _id("c")}
        for _ in range(draw(st.integers(1, 4)))
    ]
    if kind == "noid":
        calls[0]["id"] = None
    ai = AIMessage(
        draw(texts(huge=False)) if draw(st.booleans()) else "", tool_calls=calls, id=_id("a")
    )
    results: list[BaseMessage] = [
        ToolMessage(draw(texts()), tool_call_id=call["id"] or "", name="lookup", id=_id("t"))
        for call in calls
    ]
    if kind == "crash":
        results = results[: draw(st.integers(0, len(results) - 1))]
    results = draw(st.permutations(results))
    if results and draw(st.integers(0, 5)) == 0:
        results.append(results[0].model_copy(update={"id": _id("dup")}))
    return [ai, *results]


@st.composite
def transcripts(draw: st.DrawFn) -> list[BaseMessage]:
    chunks = draw(st.lists(events(), min_size=0, max_size=14))
    if draw(st.booleans()) or not chunks:
        chunks.append([HumanMessage(draw(texts()), id=_id("h"))])
    return [m for chunk in chunks for m in chunk]


@st.composite
def policies(draw: st.DrawFn) -> MemoryPolicy:
    trigger = draw(st.floats(0.3, 1.0))
    return MemoryPolicy(
        system_prompt=draw(st.sampled_from(["Be brief.", "You are a careful assistant. " * 8])),
        max_context_tokens=draw(st.integers(256, 6000)),
        memory_strategy=draw(st.sampled_from(["summarize", "trim"])),
        summary_trigger_ratio=trigger,
        summary_target_ratio=draw(st.floats(0.1, 0.95)) * trigger,
        summary_max_tokens=draw(st.integers(64, 2048)),
    )


def _usable(policy: MemoryPolicy) -> bool:
    try:
        check_budget(policy, COUNTER)
    except BudgetTooSmallError:
        return False
    return True


def independent_count(messages: Sequence[BaseMessage]) -> int:
    """The cookbook formula over the wire dicts, written out again (not the product's code)."""
    import tiktoken

    encoding = tiktoken.get_encoding("o200k_base")
    total = 3
    for wire in (openai_payload(m) for m in messages):
        total += 3
        for key, value in wire.items():
            if key == "tool_call_id":
                total += 3
            elif key == "tool_calls":
                for call in value:
                    total += len(encoding.encode(call["function"]["arguments"]))
                    total += len(encoding.encode(call["function"]["name"]))
            elif isinstance(value, list):  # text parts; images at OpenAI's price (low) or
                for part in value:  # the most a high-detail image can cost (8 tiles + base)
                    if part["type"] == "text":
                        total += len(encoding.encode(part["text"]))
                    else:
                        total += 85 if part["image_url"].get("detail") == "low" else 8 * 170 + 85
            elif value:
                total += len(encoding.encode(str(value))) + (1 if key == "name" else 0)
    return total


def view_or_none(
    transcript: list[BaseMessage], summary: str, summarized: int, policy: MemoryPolicy
) -> View | None:
    """The view, or None where refusing is allowed: many parallel tool results of the newest
    turn that cannot fit a tiny budget even cut. Plain chat never gets there."""
    try:
        return build_view(transcript, summary, summarized, policy, COUNTER)
    except BudgetTooSmallError:
        humans = [i for i, m in enumerate(transcript) if isinstance(m, HumanMessage)]
        after_newest_human = transcript[humans[-1] + 1 :] if humans else transcript
        assert sum(isinstance(m, ToolMessage) for m in after_newest_human) >= 2
        assert policy.max_context_tokens < 1000
        return None


def assert_view_invariants(
    view_messages: list[BaseMessage], transcript: list[BaseMessage], policy: MemoryPolicy
) -> None:
    assert isinstance(view_messages[0], SystemMessage)
    assert view_messages[0].content == policy.system_prompt
    body = [m for m in view_messages if not isinstance(m, SystemMessage)]
    assert COUNTER.count(view_messages) <= policy.max_context_tokens
    assert independent_count(view_messages) == COUNTER.count(view_messages)
    assert validate_messages([openai_payload(m) for m in view_messages]) is None
    if body:
        assert not isinstance(body[0], ToolMessage)
    newest = next((m for m in reversed(transcript) if isinstance(m, HumanMessage)), None)
    if newest is not None:
        shown = [m for m in body if m.id == newest.id]
        assert len(shown) == 1
        assert shown[0].content == newest.content or CUT_NOTE in str(shown[0].content)
    # transcript order is kept: the shown originals appear in increasing transcript position
    position = {m.id: i for i, m in enumerate(transcript)}
    order = [position[m.id] for m in body if m.id in position]
    assert order == sorted(order)


@PROPERTY_SETTINGS
@given(transcript=transcripts(), policy=policies(), data=st.data())
def test_every_view_keeps_the_invariants(
    transcript: list[BaseMessage], policy: MemoryPolicy, data: st.DataObject
) -> None:
    if not _usable(policy):
        return
    summary = data.draw(texts(), label="summary")
    summarized = data.draw(st.integers(0, len(transcript)), label="summarized_count")
    view = view_or_none(transcript, summary, summarized, policy)
    if view is None:
        return
    assert_view_invariants(view.messages, transcript, policy)
    assert view.tokens == COUNTER.count(view.messages)
    if summary:
        assert view.messages[1].content.startswith("Summary of the earlier conversation")
        assert view.summary_tokens <= policy.summary_cap_tokens


@PROPERTY_SETTINGS
@given(transcript=transcripts(), policy=policies())
def test_views_take_the_newest_whole_turns_and_cut_only_when_the_newest_turn_is_too_large(
    transcript: list[BaseMessage], policy: MemoryPolicy
) -> None:
    if not _usable(policy):
        return
    view = view_or_none(transcript, "", 0, policy)
    if view is None:
        return
    turns = split_turns(transcript, 0, COUNTER)
    if not turns:
        assert len(view.messages) == 1
        return
    room = policy.max_context_tokens - COUNTER.count_message(view.messages[0]) - TOKENS_PER_REPLY
    newest = turns[-1]
    if newest.tokens <= room:
        assert view.cut == 0
        shown_ids = {m.id for m in view.messages}
        older = turns[:-1]
        # the older turns shown are exactly the longest suffix that fits
        left = room - newest.tokens
        expected = 0
        for turn in reversed(older):
            if turn.tokens > left:
                break
            left -= turn.tokens
            expected += 1
        for k, turn in enumerate(reversed(older)):
            first_id = turn.units[0].messages[0].id
            assert (first_id in shown_ids) == (k < expected)
    else:  # something of the newest turn gave way: a unit between its pinned ends, or a cut
        shown_ids = {m.id for m in view.messages}
        middle_left_out = any(u.messages[0].id not in shown_ids for u in newest.units[1:-1])
        assert view.cut >= 1 or middle_left_out
        assert newest.units[0].messages[0].id in shown_ids
        assert newest.units[-1].messages[0].id in shown_ids


@PROPERTY_SETTINGS
@given(transcript=transcripts(), policy=policies(), data=st.data())
def test_folds_take_whole_old_turns_fit_the_budget_and_reach_the_target(
    transcript: list[BaseMessage], policy: MemoryPolicy, data: st.DataObject
) -> None:
    if not _usable(policy):
        return
    summary = data.draw(texts(huge=False), label="summary")
    plan = plan_fold(transcript, summary, 0, policy, COUNTER)
    turns = split_turns(transcript, 0, COUNTER)
    if policy.memory_strategy == "trim" or len(turns) < 2:
        assert plan is None
        return
    fixed = COUNTER.count_message(SystemMessage(policy.system_prompt)) + TOKENS_PER_REPLY
    if plan is None:
        view = view_or_none(transcript, summary, 0, policy)
        if view is None:
            return
        unfolded = fixed + view.summary_tokens + sum(t.tokens for t in turns)
        hysteresis_done = (
            fixed + policy.summary_cap_tokens + turns[-1].tokens + sum(t.tokens for t in turns[:-1])
            <= policy.target_tokens
        )
        assert unfolded <= policy.trigger_tokens or hysteresis_done
        return
    starts = {t.start for t in turns}
    assert plan.batches[0].start == 0
    for before, after in itertools.pairwise(plan.batches):
        assert before.end == after.start
    assert 1 <= len(plan.batches) <= MAX_SUMMARY_CALLS_PER_TURN
    end = plan.batches[-1].end
    assert end in starts and end <= turns[-1].start  # whole turns, never the newest
    at_cap = "fact " * (4 * policy.summary_cap_tokens)
    at_cap = capped_summary(at_cap, policy, COUNTER)
    for batch in plan.batches:
        request = summary_request(at_cap, batch.transcript, policy.summary_cap_tokens)
        assert COUNTER.count(request) <= policy.max_context_tokens
    if len(plan.batches) < MAX_SUMMARY_CALLS_PER_TURN:
        rest = sum(t.tokens for t in turns if t.start >= end)
        only_newest_left = end == turns[-1].start
        assert fixed + policy.summary_cap_tokens + rest <= policy.target_tokens or only_newest_left


@PROPERTY_SETTINGS
@given(text=texts(), limit=st.integers(0, 3000))
def test_cut_text_keeps_both_ends_and_marks_the_cut(text: str, limit: int) -> None:
    result = cut_text(text, limit, COUNTER)
    if COUNTER.count_text(text) <= limit:
        assert result == text
        return
    assert CUT_NOTE in result
    marker_only = ALL_CUT_MARKER.format(chars=len(text))
    if result != marker_only:
        assert COUNTER.count_text(result) <= limit
        head, _, tail = result.partition("\n[…")
        assert text.startswith(head)
        assert text.endswith(tail.partition("…]\n")[2])


@PROPERTY_SETTINGS
@given(sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=6), room=st.integers(30, 4000))
def test_fit_messages_keeps_small_messages_whole(sizes: list[int], room: int) -> None:
    messages = [HumanMessage("word " * (size // 5), id=_id("h")) for size in sizes]
    fitted = fit_messages(messages, room, COUNTER)
    if fitted is None:
        return
    assert sum(COUNTER.count_message(m) for m in fitted) <= room
    cut = [m for m, f in zip(messages, fitted, strict=True) if f is not m]
    whole = [m for m, f in zip(messages, fitted, strict=True) if f is m]
    if cut:
        smallest_cut = min(COUNTER.count_message(m) for m in cut)
        assert all(COUNTER.count_message(m) <= smallest_cut for m in whole)


def test_the_counter_is_exact_for_openai_models() -> None:
    counter: TokenCounter = make_token_counter("gpt-4o-mini")
    assert counter.count_text("hello world") == 2
    assert counter.exact
