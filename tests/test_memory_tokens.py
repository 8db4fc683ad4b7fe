"""Token counts that match what ChatOpenAI sends, computed offline.

The view's count is checked three ways against the request the stub recorded: an independent
cookbook count of the recorded JSON, `ChatOpenAI.get_num_tokens_from_messages`, and the
telemetry the turn reported. Offline behaviour runs in a fresh interpreter whose network is
a dead proxy and whose tiktoken cache starts empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from tests.fixtures.memory import wire_message_tokens
from tests.fixtures.openai_stub import OpenAIStub
from threadline.assembly import make_graph
from threadline.graph import MemoryPolicy
from threadline.graph.memory import build_view
from threadline.graph.tokens import (
    install_offline_encodings,
    make_token_counter,
    openai_payload,
    tool_schema_tokens,
)


@tool
def weather(city: str, unit: str = "C") -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def varied_transcript() -> list:
    calls = [
        {"name": "weather", "args": {"city": "Zürich"}, "id": "call_a"},
        {"name": "weather", "args": {"city": "東京", "unit": "F"}, "id": "call_b"},
    ]
    return [
        HumanMessage("Hi, I'm Grace — weather in Zürich and 東京? 🙂", name="grace", id="h1"),
        AIMessage("", tool_calls=calls, id="a1"),
        ToolMessage('{"temp": 21, "sky": "clear"}', tool_call_id="call_a", id="t1"),
        ToolMessage("rainy, 17°C", tool_call_id="call_b", name="weather", id="t2"),
        AIMessage("Zürich is clear at 21°C; Tokyo is rainy.", id="a2"),
        HumanMessage([{"type": "text", "text": "And tomorrow?"}], id="h2"),
    ]


def test_view_count_matches_the_request_chatopenai_sends(openai_stub: OpenAIStub) -> None:
    openai_stub.enqueue("Tomorrow looks similar.")
    model = openai_stub.chat_model()
    policy = MemoryPolicy(system_prompt="You are terse.", max_context_tokens=2000)
    graph = make_graph(InMemorySaver(), model=model, policy=policy, tools=[weather])
    config = {"configurable": {"thread_id": "count"}}
    transcript = varied_transcript()
    seed = {"messages": transcript[:-1], "summary": "Grace likes maps."}
    graph.update_state(config, seed, as_node="model")
    graph.invoke({"messages": [transcript[-1]]}, config)

    before_model = next(s for s in graph.get_state_history(config) if s.next == ("model",))
    values = before_model.values
    counter = make_token_counter("gpt-4o-mini")
    view = build_view(
        values["messages"],
        values["summary"],
        values.get("summarized_count", 0),
        policy,
        counter,
        tool_schema_tokens([weather], counter),
    ).messages
    sent = openai_stub.last_request

    assert [openai_payload(m) for m in view] == sent.messages  # the view is what went out
    independent = wire_message_tokens(sent.messages)
    assert counter.count(view) == independent
    assert model.get_num_tokens_from_messages(view) == independent
    telemetry = graph.get_state(config).values["telemetry"]
    assert telemetry["view_tokens"] - telemetry["tool_schema_tokens"] == independent
    install_offline_encodings()
    import tiktoken

    tools_json = json.dumps(sent.body["tools"])
    assert telemetry["tool_schema_tokens"] == len(
        tiktoken.get_encoding("o200k_base").encode(tools_json)
    )
    assert telemetry["exact_count"] is True


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING)
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from threadline.graph.tokens import make_token_counter
    messages = [
        HumanMessage("weather in Zürich?", name="grace"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Zürich"}, "id": "c1"}]),
        ToolMessage("sunny", tool_call_id="c1"),
    ]
    counter = make_token_counter(sys.argv[1])
    ours = counter.count(messages)
    reference = None
    if counter.exact:
        from langchain_openai import ChatOpenAI
        model = ChatOpenAI(model=sys.argv[1], api_key="unused")
        reference = model.get_num_tokens_from_messages(messages)
    print(json.dumps({"exact": counter.exact, "ours": ours, "reference": reference}))
    """
)


def run_offline(tmp_path: Path, cache_dir: Path, model_name: str) -> dict:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TIKTOKEN_CACHE_DIR": str(cache_dir),
        # Any download attempt goes to a closed port and fails.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, model_name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    payload["stderr"] = result.stderr
    return payload


def test_counting_works_offline_and_matches_chatopenai(tmp_path: Path) -> None:
    result = run_offline(tmp_path, tmp_path / "empty-cache", "gpt-4o-mini")
    assert result["exact"] is True
    assert result["ours"] == result["reference"]


def test_counting_degrades_to_the_approximation_when_tiktoken_cannot_load(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be created under a file")
    result = run_offline(tmp_path, blocker / "cache", "gpt-4o-mini")
    assert result["exact"] is False
    assert result["ours"] > 0
    assert "counting tokens approximately" in result["stderr"]


def test_other_models_are_counted_approximately_and_conservatively() -> None:
    counter = make_token_counter("claude-sonnet")
    exact = make_token_counter("gpt-4o-mini")
    assert counter.exact is False
    english = HumanMessage("The quick brown fox jumps over the lazy dog. " * 40)
    assert counter.count([english]) >= exact.count([english])
    assert make_token_counter("gpt-4o-mini", "approximate").exact is False
