"""Summary calls that fail, time out or come back empty, injected at the OpenAI stub.

The turn must still succeed by trimming, history and summary must stay exactly as they were
(no error text anywhere), the next turn may try again, and a failing call is not retried
within the same turn's tool loop. Sync and async graph paths both.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from tests.fixtures.memory import is_summary_request, request_tokens
from tests.fixtures.openai_stub import OpenAIStub, RecordedRequest, Reply
from threadline.assembly import make_graph
from threadline.graph import MemoryPolicy

BUDGET = 1000


@tool
def ping() -> str:
    """Check the line."""
    return "pong"


def make(stub: OpenAIStub, timeout: float = 10.0, **kwargs: Any) -> CompiledStateGraph:
    policy = MemoryPolicy(
        system_prompt="Be brief.", max_context_tokens=BUDGET, summary_timeout_seconds=timeout
    )
    return make_graph(InMemorySaver(), model=stub.chat_model(), policy=policy, **kwargs)


def seed_over_trigger(graph: CompiledStateGraph, config: dict[str, Any]) -> list[BaseMessage]:
    """A thread whose next turn passes the fold trigger (16 turns of ~60 tokens each)."""
    messages: list[BaseMessage] = []
    for turn in range(16):
        messages.append(HumanMessage(f"question {turn}: " + "lorem " * 50, id=f"h{turn}"))
        messages.append(AIMessage(f"answer {turn}: " + "ipsum " * 10, id=f"a{turn}"))
    graph.update_state(config, {"messages": messages}, as_node="model")
    return messages


def assert_untouched(values: dict[str, Any], seeded: list[BaseMessage], sent: str) -> None:
    """History = seed + this turn's question and answer; no summary; no error text anywhere."""
    messages = values["messages"]
    assert [(m.id, m.content) for m in messages[: len(seeded)]] == [
        (m.id, m.content) for m in seeded
    ]
    assert [m.type for m in messages[len(seeded) :]] == ["human", "ai"]
    assert messages[len(seeded)].content == sent
    assert messages[-1].content == f"echo: {sent}"
    assert not values.get("summary")
    assert values.get("summarized_count", 0) == 0
    assert not any("error" in str(m.content).lower() for m in messages)


async def test_a_failing_summary_call_trims_instead_and_the_next_turn_tries_again(
    openai_stub: OpenAIStub,
) -> None:
    graph = make(openai_stub)
    config = {"configurable": {"thread_id": "fail"}}
    seeded = seed_over_trigger(graph, config)
    failing = openai_stub.fail_when(is_summary_request, 500)

    values = await graph.ainvoke({"messages": [HumanMessage("still there?")]}, config)

    assert_untouched(values, seeded, "still there?")
    assert failing.hits == 1
    telemetry = values["telemetry"]
    assert telemetry["summary_error"] in {"InternalServerError", "OpenAIAPIError"}
    assert telemetry["hidden_messages"] > 0  # trimmed instead
    assert all(request_tokens(r) <= BUDGET for r in openai_stub.completions)

    await graph.ainvoke({"messages": [HumanMessage("and now?")]}, config)
    assert failing.hits == 2  # a new turn, a new attempt

    failing.remove()
    values = await graph.ainvoke({"messages": [HumanMessage("and now, working?")]}, config)
    assert values["summarized_count"] > 0
    assert values["summary"].startswith("echo: ")  # the stub's echo is this summary
    assert "summary_error" not in values["telemetry"]


def test_a_failing_summary_is_tried_once_per_turn_not_once_per_tool_round(
    openai_stub: OpenAIStub,
) -> None:
    def model(request: RecordedRequest) -> Reply:
        if request.messages[-1].get("role") == "tool":
            return Reply.text("done")
        return Reply.tools("ping")

    openai_stub.responder = model
    graph = make(openai_stub, tools=[ping])
    config = {"configurable": {"thread_id": "tools"}}
    seed_over_trigger(graph, config)
    failing = openai_stub.fail_when(is_summary_request, 503)

    values = graph.invoke({"messages": [HumanMessage("ping it")]}, config)

    assert [m.type for m in values["messages"][-3:]] == ["ai", "tool", "ai"]
    assert values["messages"][-1].content == "done"
    assert failing.hits == 1  # trim_or_summarize ran twice in this turn, the call once
    assert not values.get("summary")


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_a_slow_summary_call_times_out_and_the_turn_trims(
    openai_stub: OpenAIStub, path: str
) -> None:
    delay = 3.0
    graph = make(openai_stub, timeout=0.3)
    config = {"configurable": {"thread_id": f"slow-{path}"}}
    seeded = seed_over_trigger(graph, config)
    openai_stub.delay_when(is_summary_request, delay)
    turn = {"messages": [HumanMessage("quick?")]}

    started = time.monotonic()
    if path == "sync":
        values = await asyncio.to_thread(graph.invoke, turn, config)
    else:
        values = await graph.ainvoke(turn, config)
    elapsed = time.monotonic() - started

    assert elapsed < delay  # it did not wait for the summary
    assert_untouched(values, seeded, "quick?")
    assert values["telemetry"]["summary_error"].endswith("TimeoutError")
    # The abandoned sync call ends with its own request timeout, not the stub's late answer.
    deadline = time.monotonic() + delay - elapsed - 0.5
    while time.monotonic() < deadline and any(
        t.name == "threadline-summary" for t in threading.enumerate()
    ):
        await asyncio.sleep(0.05)
    assert not any(t.name == "threadline-summary" for t in threading.enumerate())


def test_an_empty_summary_is_a_failure_not_a_summary(openai_stub: OpenAIStub) -> None:
    def model(request: RecordedRequest) -> Reply:
        if is_summary_request(request):
            return Reply.text("   ")
        return Reply.text(f"echo: {request.last_user_text}")

    openai_stub.responder = model
    graph = make(openai_stub)
    config = {"configurable": {"thread_id": "empty"}}
    seeded = seed_over_trigger(graph, config)

    values = graph.invoke({"messages": [HumanMessage("hello?")]}, config)

    assert_untouched(values, seeded, "hello?")
    assert values["telemetry"]["summary_error"] == "ValueError"


async def test_summary_tokens_are_never_streamed_to_the_user(openai_stub: OpenAIStub) -> None:
    secret = "SUMMARY-TEXT-NOT-FOR-THE-USER"

    def model(request: RecordedRequest) -> Reply:
        if is_summary_request(request):
            return Reply.text(secret)
        return Reply.text("the visible reply")

    openai_stub.responder = model
    graph = make(openai_stub)
    config = {"configurable": {"thread_id": "stream"}}
    seed_over_trigger(graph, config)

    streamed = ""
    async for chunk, _meta in graph.astream(
        {"messages": [HumanMessage("go")]}, config, stream_mode="messages"
    ):
        streamed += str(chunk.content)

    assert "the visible reply" in streamed
    assert secret not in streamed
    assert graph.get_state(config).values["summary"] == secret  # the fold did happen
