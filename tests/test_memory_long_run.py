"""A 300-turn conversation with tool calls, through the real ChatOpenAI client and the stub.

The stub rejects what the real API rejects (orphan or unanswered tool calls → 400) and records
every request, so the budget is checked on what was really sent, counted independently with
tiktoken. Every 4th turn the model calls a tool, every 10th it calls three in parallel, one of
them returning a large result. The stub's summariser keeps FACT sentences, as a faithful
summary keeps facts; turn 1 states two of them.
"""

from __future__ import annotations

import random
import statistics

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from tests.fixtures.memory import (
    fact_keeping_summary,
    is_summary_request,
    request_tokens,
    turn_number,
    wire_message_tokens,
)
from tests.fixtures.openai_stub import OpenAIStub, RecordedRequest, Reply
from threadline.assembly import make_graph
from threadline.graph import MemoryPolicy

TURNS = 300
BUDGET = 4000
# Folds happen at 90% of the budget and leave at most 50%; a turn here averages ~230 tokens,
# so a fold is due about every 6 turns. The bound asserted leaves room for the tool turns.
TURNS_PER_SUMMARY_CALL = 4
TURN_1_FACTS = ("FACT: my name is Ada Lovelace.", "FACT: the launch code is 7-ALPHA-9.")


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the archive."""
    size = 600 if topic.startswith("big") else 40
    return f"Archive entry on {topic}: " + " ".join(f"record{i}" for i in range(size))


@tool
def clock() -> str:
    """The current time."""
    return "12:00"


def user_text(turn: int) -> str:
    words = random.Random(turn).randint(15, 110)
    text = f"Turn {turn}: " + " ".join(f"word{(turn * 7 + i) % 97}" for i in range(words))
    if turn == 1:
        text += " " + " ".join(TURN_1_FACTS)
    if turn % 75 == 0:
        text += f" FACT: milestone {turn} was reached."
    return text


def scripted_model(request: RecordedRequest) -> Reply:
    if is_summary_request(request):
        return fact_keeping_summary(request)
    if request.messages[-1].get("role") == "tool":
        return Reply.text(f"From the tools: {len(request.tool_result_ids())} results read.")
    turn = turn_number(request)
    if turn % 10 == 0:
        return Reply.tools(
            ("lookup", {"topic": f"big-{turn}"}), ("lookup", {"topic": f"small-{turn}"}), "clock"
        )
    if turn % 4 == 0:
        return Reply.tools(("lookup", {"topic": f"small-{turn}"}))
    words = random.Random(-turn).randint(20, 90)
    return Reply.text(" ".join(f"reply{(turn + i) % 53}" for i in range(words)))


async def test_300_turns_with_tools_stay_in_budget_and_keep_turn_1_facts(
    openai_stub: OpenAIStub,
) -> None:
    openai_stub.responder = scripted_model
    policy = MemoryPolicy(
        system_prompt="You are a helpful assistant. Be concise.",
        max_context_tokens=BUDGET,
        summary_max_tokens=600,
    )
    graph = make_graph(
        InMemorySaver(), model=openai_stub.chat_model(), policy=policy, tools=[lookup, clock]
    )
    config = {"configurable": {"thread_id": "long"}}
    telemetry_vs_request: list[tuple[int, int]] = []
    for turn in range(1, TURNS + 1):
        seen = len(openai_stub.requests)
        state = await graph.ainvoke({"messages": [HumanMessage(user_text(turn))]}, config)
        last_model_request = next(
            r for r in reversed(openai_stub.requests[seen:]) if not is_summary_request(r)
        )
        assert turn_number(last_model_request) == turn  # the newest human message is there
        telemetry = state["telemetry"]
        telemetry_vs_request.append(
            (
                telemetry["view_tokens"] - telemetry["tool_schema_tokens"],
                wire_message_tokens(last_model_request.messages),
            )
        )

    requests = openai_stub.completions
    summaries = [r for r in requests if is_summary_request(r)]
    turns = [r for r in requests if not is_summary_request(r)]
    sizes = [request_tokens(r) for r in requests]
    assert [r.status for r in requests] == [200] * len(requests), "the stub answered a 400"
    assert max(sizes) <= BUDGET
    assert len(summaries) <= TURNS / TURNS_PER_SUMMARY_CALL
    assert len(summaries) >= 1
    assert all(ours == sent for ours, sent in telemetry_vs_request)
    assert state["total_folds"] <= len(summaries)
    for fact in TURN_1_FACTS:
        assert fact in state["summary"]
        assert fact in turns[-1].system_text  # and the model still sees it at turn 300
    assert len(state["messages"]) > 2 * TURNS  # the whole transcript stays in state
    print(
        f"\n300-turn run: {len(requests)} requests ({len(turns)} model, {len(summaries)} summary),"
        f" max {max(sizes)} tokens of a {BUDGET} budget,"
        f" mean {statistics.mean(request_tokens(r) for r in turns):.0f} per model request,"
        f" mean {statistics.mean(request_tokens(r) for r in summaries):.0f} per summary request,"
        f" {state['total_folds']} folds, one summary call per"
        f" {TURNS / len(summaries):.1f} turns"
    )
