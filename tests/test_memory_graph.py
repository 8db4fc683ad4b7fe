"""The memory policy inside the graph, through the real ChatOpenAI client and the stub.

Oversized messages and tool results, transcripts broken by crashes, per-request overrides
and their validation, the trim strategy, the summary's budget-bounded cap and the telemetry
log. Every request is checked where the real API would check it: at the stub.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from tests.fixtures.memory import is_summary_request, request_tokens
from tests.fixtures.openai_stub import OpenAIStub, RecordedRequest, Reply
from threadline.assembly import make_graph
from threadline.graph import BudgetTooSmallError, InvalidOverrideError, MemoryPolicy
from threadline.graph.prompts import MISSING_TOOL_RESULT

CUT = "characters cut to fit the context budget"


def make(
    stub: OpenAIStub, budget: int = 1000, **kwargs: Any
) -> CompiledStateGraph[Any, Any, Any, Any]:
    policy_fields = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("summary_")}
    policy = MemoryPolicy(system_prompt="Be brief.", max_context_tokens=budget, **policy_fields)
    return make_graph(InMemorySaver(), model=stub.chat_model(), policy=policy, **kwargs)


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def all_within(stub: OpenAIStub, budget: int) -> bool:
    return all(r.status == 200 and request_tokens(r) <= budget for r in stub.completions)


# --------------------------------------------------------------------------- oversized input


def test_a_message_larger_than_the_budget_is_shown_cut_with_a_marker_then_folded(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub)
    config = thread("huge")
    huge = "BEGIN-OF-PASTE " + "filler text " * 5000 + " END-OF-PASTE"

    values = graph.invoke({"messages": [HumanMessage(huge)]}, config)

    sent = openai_stub.last_request.last_user_text
    assert CUT in sent
    assert sent.startswith("BEGIN-OF-PASTE") and sent.endswith("END-OF-PASTE")
    assert values["messages"][0].content == huge  # the transcript keeps it whole
    assert values["telemetry"]["cut_messages"] == 1

    for turn in range(3):
        values = graph.invoke({"messages": [HumanMessage(f"next {turn}")]}, config)
    summaries = [r for r in openai_stub.completions if is_summary_request(r)]
    assert len(summaries) == 1  # folded once, no fold loop
    assert CUT in summaries[0].last_user_text
    assert values["summarized_count"] == 2
    assert all_within(openai_stub, 1000)


def test_large_parallel_tool_results_of_the_newest_turn_are_cut_not_dropped(
    openai_stub: OpenAIStub,
) -> None:
    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        return f"HEAD-OF-{url} " + "page content " * 3000 + f" TAIL-OF-{url}"

    def model(request: RecordedRequest) -> Reply:
        if request.messages[-1].get("role") == "tool":
            return Reply.text("summarised the pages")
        return Reply.tools(("fetch", {"url": "a"}), ("fetch", {"url": "b"}))

    openai_stub.responder = model
    graph = make(openai_stub, budget=1500, tools=[fetch])

    values = graph.invoke({"messages": [HumanMessage("read both pages")]}, thread("pages"))

    assert values["messages"][-1].content == "summarised the pages"
    assert len(openai_stub.completions) == 2  # the results reached the model: no re-call
    answer_request = openai_stub.completions[-1]
    assert answer_request.roles[-4:] == ["user", "assistant", "tool", "tool"]
    results = answer_request.texts("tool")
    assert all(CUT in text for text in results)
    assert results[0].startswith("HEAD-OF-") and results[0].rstrip().endswith(("a", "b"))
    assert all_within(openai_stub, 1500)


# --------------------------------------------------------------------------- broken transcripts


def seed(
    graph: CompiledStateGraph[Any, Any, Any, Any], name: str, messages: list[BaseMessage]
) -> dict[str, Any]:
    config = thread(name)
    graph.update_state(config, {"messages": messages}, as_node="model")
    return config


def test_tool_calls_left_unanswered_by_a_crash_reach_the_model_answered(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub)
    calls = [
        {"name": "lookup", "args": {"q": "x"}, "id": "call_x"},
        {"name": "lookup", "args": {"q": "y"}, "id": "call_y"},
    ]
    crashed = [
        HumanMessage("look x and y up", id="h1"),
        AIMessage("", tool_calls=calls, id="a1"),
        ToolMessage("x is 1", tool_call_id="call_x", id="t1"),
    ]
    config = seed(graph, "crash", crashed)

    values = graph.invoke({"messages": [HumanMessage("hello again")]}, config)

    request = openai_stub.last_request
    assert request.status == 200
    assert request.tool_result_ids() == ["call_x", "call_y"]
    assert request.texts("tool") == ["x is 1", MISSING_TOOL_RESULT]
    assert [m.id for m in values["messages"][:3]] == ["h1", "a1", "t1"]  # not rewritten
    assert values["telemetry"]["patched_tool_results"] == 1


def test_orphan_tool_messages_and_malformed_calls_never_reach_the_model(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub)
    broken = [
        ToolMessage("orphan at the start", tool_call_id="gone_1", id="t0"),
        HumanMessage("hi", id="h1"),
        ToolMessage("orphan after a human", tool_call_id="gone_2", id="t1"),
        AIMessage(
            "",
            invalid_tool_calls=[
                {"name": "lookup", "args": "{not json", "id": "call_bad", "error": "bad"}
            ],
            id="a1",
        ),
    ]
    config = seed(graph, "orphans", broken)

    graph.invoke({"messages": [HumanMessage("still fine?")]}, config)

    request = openai_stub.last_request
    assert request.status == 200
    assert not any("orphan" in text for text in request.texts())
    assert request.tool_result_ids() == ["call_bad"]


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("context", "configurable", "field"),
    [
        ({"max_context_tokens": 100}, {}, "max_context_tokens"),
        ({"max_context_tokens": True}, {}, "max_context_tokens"),
        ({"no_such_field": 1}, {}, "no_such_field"),
        ({}, {"memory_strategy": "fold"}, "memory_strategy"),
        ({}, {"max_context_tokens": "4000"}, "max_context_tokens"),
        ({}, {"system_prompt": "   "}, "system_prompt"),
    ],
)
async def test_bad_overrides_raise_a_clear_error_before_any_model_call(
    openai_stub: OpenAIStub, context: dict[str, Any], configurable: dict[str, Any], field: str
) -> None:
    graph = make(openai_stub)
    config = {"configurable": {"thread_id": "bad", **configurable}}

    with pytest.raises(InvalidOverrideError, match=field):
        await graph.ainvoke({"messages": [HumanMessage("hi")]}, config, context=context or None)

    assert openai_stub.requests == []


def test_a_system_prompt_override_too_large_for_the_budget_is_refused(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub)
    with pytest.raises(BudgetTooSmallError, match="half") as raised:
        graph.invoke(
            {"messages": [HumanMessage("hi")]},
            thread("prompt"),
            context={"system_prompt": "Rules. " * 400},
        )
    assert isinstance(raised.value, InvalidOverrideError)
    assert "this request" in str(raised.value)
    assert openai_stub.requests == []


def test_overrides_apply_to_one_request_context_winning_over_configurable(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub, budget=4000)
    config = {"configurable": {"thread_id": "ovr", "system_prompt": "From configurable."}}

    graph.invoke({"messages": [HumanMessage("one")]}, config)
    assert openai_stub.last_request.messages[0]["content"] == "From configurable."

    values = graph.invoke(
        {"messages": [HumanMessage("two")]},
        config,
        context={"system_prompt": "From context.", "max_context_tokens": 300},
    )
    assert openai_stub.last_request.messages[0]["content"] == "From context."
    assert values["telemetry"]["budget"] == 300
    assert request_tokens(openai_stub.last_request) <= 300

    graph.invoke({"messages": [HumanMessage("three")]}, thread("ovr"))
    assert openai_stub.last_request.messages[0]["content"] == "Be brief."


def test_trim_strategy_drops_whole_old_turns_and_never_calls_the_model_to_summarise(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub, budget=400)
    config = {"configurable": {"thread_id": "trim", "memory_strategy": "trim"}}
    for turn in range(12):
        values = graph.invoke({"messages": [HumanMessage(f"turn {turn} " + "la " * 40)]}, config)

    assert not any(is_summary_request(r) for r in openai_stub.completions)
    assert all_within(openai_stub, 400)
    assert values["telemetry"]["hidden_messages"] > 0
    assert values["telemetry"]["strategy"] == "trim"
    for request in openai_stub.completions:
        assert request.roles[1] == "user"  # whole turns: the kept part starts with a question
    assert len(values["messages"]) == 24


# --------------------------------------------------------------------------- summary cap


def test_the_summary_cap_is_bounded_by_a_share_of_the_budget(openai_stub: OpenAIStub) -> None:
    def model(request: RecordedRequest) -> Reply:
        if is_summary_request(request):
            return Reply.text("FIRST-FACT " + "a very long summary " * 2000 + " LAST-FACT")
        return Reply.text("ok")

    openai_stub.responder = model
    graph = make(openai_stub, budget=1000, summary_max_tokens=5000)
    config = thread("cap")
    for turn in range(14):
        values = graph.invoke({"messages": [HumanMessage(f"turn {turn} " + "x " * 60)]}, config)

    telemetry = values["telemetry"]
    assert telemetry["total_folds"] >= 1
    assert telemetry["summary_cap_tokens"] == 250  # a quarter of 1000, not 5000
    assert telemetry["summary_tokens"] <= 250
    request = openai_stub.completions[-1]
    assert "FIRST-FACT" in request.system_text and CUT in request.system_text
    assert all_within(openai_stub, 1000)

    values = graph.invoke(
        {"messages": [HumanMessage("smaller now")]}, config, context={"max_context_tokens": 400}
    )
    assert values["telemetry"]["summary_tokens"] <= 100  # re-cut to the smaller budget's cap
    assert request_tokens(openai_stub.completions[-1]) <= 400


# --------------------------------------------------------------------------- telemetry


async def test_every_model_call_reports_and_logs_its_budget(
    openai_stub: OpenAIStub, caplog: pytest.LogCaptureFixture
) -> None:
    graph = make(openai_stub)
    private = "my private words"
    with caplog.at_level(logging.INFO, logger="threadline.memory"):
        values = await graph.ainvoke({"messages": [HumanMessage(private)]}, thread("log"))

    telemetry = values["telemetry"]
    sent = request_tokens(openai_stub.last_request)
    assert telemetry["view_tokens"] == sent
    assert telemetry["budget"] == 1000
    assert telemetry["percent_used"] == round(100 * sent / 1000, 1)
    assert telemetry["folded_this_turn"] == 0 and telemetry["total_folds"] == 0
    assert telemetry["summary_tokens"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "threadline.memory"]
    assert any(f"{sent}/1000 tokens" in line for line in lines)
    assert not any(private in line for line in lines)
